"""jobq: a PostgreSQL-native async job queue. The rules live in SQL."""

__version__ = "0.1.0.dev0"

from jobq.client import AsyncClient as AsyncClient
from jobq.client import CachedResult as CachedResult
from jobq.client import Client as Client
from jobq.client import CursorPage as CursorPage
from jobq.client import DedupResult as DedupResult
from jobq.client import JobPage as JobPage
from jobq.client import LogPage as LogPage
from jobq.client import NewJob as NewJob
from jobq.errors import DatabaseUnavailable as DatabaseUnavailable
from jobq.errors import Forbidden as Forbidden
from jobq.errors import InvalidInput as InvalidInput
from jobq.errors import InvalidTransition as InvalidTransition
from jobq.errors import JobqError as JobqError
from jobq.errors import NotFound as NotFound
from jobq.errors import PayloadTooLarge as PayloadTooLarge
from jobq.errors import RateLimited as RateLimited
from jobq.handlers import JobCancelled as JobCancelled
from jobq.handlers import JobContext as JobContext
from jobq.handlers import JobFailed as JobFailed
from jobq.handlers import Registry as Registry
from jobq.models import Job as Job
from jobq.models import JobLog as JobLog
from jobq.models import StatRow as StatRow
from jobq.worker import Worker as Worker
