"""jobq's HTTP API: jobs, logs, stats and live events, secured by the database.

``create_app(settings)`` builds the ASGI app; ``jobq serve`` runs it on uvicorn.
"""

from jobq.api.app import create_app as create_app
from jobq.api.auth import Identity as Identity
from jobq.api.auth import TokenVerifier as TokenVerifier
from jobq.api.auth import mint_token as mint_token
from jobq.api.settings import Settings as Settings
from jobq.api.settings import SettingsError as SettingsError
