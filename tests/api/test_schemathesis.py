"""A bounded schemathesis run against /openapi.json: no input, valid or not,
makes the API answer with a 5xx, as a service or as a user, and the responses
match the documented schemas, status codes and content types.

Bounded for CI (``MAX_EXAMPLES`` per operation and identity, derandomized).
``make fuzz-api`` runs it much longer: ``JOBQ_SCHEMATHESIS_EXAMPLES`` sets the
examples per operation (default 40) and ``JOBQ_SCHEMATHESIS_SEED`` an int seed,
or ``random`` for a fresh one (printed, so that a failure can be replayed);
unset, the run is derandomized. The test prints what it ran: operations,
examples, calls, answers by status and seconds.
/events is left out: with a valid token it is an endless stream by design
(tests/api/test_events.py covers it).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter

import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.api._support import A, Api

MAX_EXAMPLES = int(os.environ.get("JOBQ_SCHEMATHESIS_EXAMPLES", "40"))


def _seed() -> int | None:
    """None: derandomized (CI); else the seed of a randomized run."""
    raw = os.environ.get("JOBQ_SCHEMATHESIS_SEED", "").strip()
    if not raw:
        return None
    return random.SystemRandom().randrange(2**32) if raw == "random" else int(raw)


SEED = _seed()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_server_errors(api: Api) -> None:
    # A few jobs of A's, so that lists, stats and logs have rows to serialise.
    owner = api.as_user(A)
    jobs = [
        owner.post("/jobs", json={"job_type": f"st.{i}", "params": {"i": i}}).json()["job_id"]
        for i in range(3)
    ]
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    session = requests.Session()
    headers = [
        {"Authorization": f"Bearer {token}"} for token in (api.tokens.service(), api.tokens.user(A))
    ]
    tested = []
    examples: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    if SEED is not None:
        print(f"\nschemathesis seed {SEED} (JOBQ_SCHEMATHESIS_SEED={SEED} replays this run)")
    current = [""]  # the operation being run (the closure below counts for it)
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events":
            continue

        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        if "{job_id}" in operation.path:  # real jobs too, not only unknown ids
            strategies.append(
                operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"job_id": jobs[0]})
            )

        name = current[0] = f"{operation.method.upper()} {operation.path}"

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=SEED is None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            examples[current[0]] += 1
            for h in headers:
                response = case.call_and_validate(
                    base_url=api.url, session=session, headers=h, checks=CHECKS
                )
                statuses[response.status_code] += 1

        if SEED is not None:
            run = seed(SEED)(run)
        run()
        tested.append(name)
    print(
        f"\nschemathesis: {len(tested)} operations, max {MAX_EXAMPLES} examples each, "
        f"seed {'derandomized' if SEED is None else SEED}; {sum(examples.values())} examples "
        f"({', '.join(f'{k} {v}' for k, v in examples.items())}), "
        f"{sum(statuses.values())} calls, statuses {dict(sorted(statuses.items()))}, "
        f"{time.monotonic() - started:.0f} s"
    )
    assert set(tested) >= {
        "POST /jobs",
        "GET /jobs",
        "GET /jobs/{job_id}",
        "GET /jobs/{job_id}/logs",
        "POST /jobs/{job_id}/cancel",
        "POST /jobs/{job_id}/retry",
        "GET /stats",
        "GET /health",
    }, tested
