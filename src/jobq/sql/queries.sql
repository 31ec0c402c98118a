-- Named queries run by the Python side, loaded by name (jobq.queries.get).
--
-- Each query starts at a "-- name: <name>" line and runs to the next one.
-- Placeholders are psycopg's %(name)s. Every parameter is cast to the type of
-- the function argument it feeds, so overload resolution never depends on how
-- psycopg chose to send a Python value (int2 vs int8, text vs unknown).
-- The rules (limits, dedup, cache, ownership) live in the functions: these
-- queries only call them.

-- name: create_job
-- One job; returns its id.
SELECT public.create_job(
    p_user_id     => %(user_id)s::uuid,
    p_job_type    => %(job_type)s::text,
    p_params      => %(params)s::jsonb,
    p_priority    => %(priority)s::integer,
    p_max_retries => %(max_retries)s::integer,
    p_run_after   => %(run_after)s::timestamptz,
    p_ttl         => %(ttl)s::interval
) AS job_id;

-- name: create_jobs
-- Many jobs in one statement (a JSON array of job objects); ids in input order.
SELECT c.idx, c.job_id
  FROM public.create_jobs(p_user_id => %(user_id)s::uuid, p_jobs => %(jobs)s::jsonb) AS c
 ORDER BY c.idx;

-- name: find_or_create_job
SELECT f.job_id, f.created, f.status
  FROM public.find_or_create_job(
    p_user_id       => %(user_id)s::uuid,
    p_job_type      => %(job_type)s::text,
    p_params        => %(params)s::jsonb,
    p_dedupe_window => %(dedupe_window)s::interval,
    p_priority      => %(priority)s::integer,
    p_max_retries   => %(max_retries)s::integer,
    p_run_after     => %(run_after)s::timestamptz,
    p_ttl           => %(ttl)s::interval
  ) AS f;

-- name: get_cached_job_result
-- No row is a cache miss.
SELECT c.job_id, c.result, c.completed_at
  FROM public.get_cached_job_result(
    p_user_id   => %(user_id)s::uuid,
    p_job_type  => %(job_type)s::text,
    p_params    => %(params)s::jsonb,
    p_cache_ttl => %(ttl)s::interval
  ) AS c;

-- name: get_job
-- A plain read under RLS: a user sees only their own jobs.
SELECT j.* FROM public.job_queue j WHERE j.id = %(job_id)s::uuid;

-- name: get_jobs
-- Many jobs in one read (a dashboard polling a page of jobs), under RLS: ids
-- that do not exist or are not the caller's are simply not returned.
SELECT j.* FROM public.job_queue j WHERE j.id = ANY(%(job_ids)s::uuid[]);

-- name: get_user_jobs
-- Offset pagination (with total_count in every row) or, when the cursor
-- arguments are given, keyset pagination on (created_at, id).
SELECT g.*
  FROM public.get_user_jobs(
    p_user_id           => %(user_id)s::uuid,
    p_status            => %(status)s::text,
    p_job_type          => %(job_type)s::text,
    p_limit             => %(limit)s::integer,
    p_offset            => %(offset)s::integer,
    p_order_by          => %(order_by)s::text,
    p_order_dir         => %(order_dir)s::text,
    p_cursor_created_at => %(cursor_created_at)s::timestamptz,
    p_cursor_id         => %(cursor_id)s::uuid,
    p_params_contains   => %(params_contains)s::jsonb,
    p_result_contains   => %(result_contains)s::jsonb,
    p_with_total        => %(with_total)s::boolean
  ) AS g;

-- name: get_job_logs
SELECT l.*
  FROM public.get_job_logs(
    p_job_id  => %(job_id)s::uuid,
    p_user_id => %(user_id)s::uuid,
    p_limit   => %(limit)s::integer,
    p_offset  => %(offset)s::integer,
    p_level   => %(level)s::text,
    p_search  => %(search)s::text
  ) AS l;

-- name: cancel_job
SELECT public.cancel_job(p_job_id => %(job_id)s::uuid) AS status;

-- name: retry_job
SELECT public.retry_job(p_job_id => %(job_id)s::uuid) AS status;

-- name: get_job_queue_stats
SELECT s.*
  FROM public.get_job_queue_stats(
    p_user_id => %(user_id)s::uuid,
    p_since   => %(since)s::timestamptz
  ) AS s;

-- name: get_job_throughput
-- Finished jobs per minute, per type and in all (told apart by which key is NULL).
SELECT t.*
  FROM public.get_job_throughput(
    p_user_id => %(user_id)s::uuid,
    p_since   => %(since)s::interval
  ) AS t;

-- name: get_queue_depth
-- Unfinished jobs by type and status, across users (service_role only).
SELECT d.* FROM public.get_queue_depth() AS d;

-- name: current_identity
-- The role and claims in force on a caller's connection, saved before a call
-- made on it switches them (set_config(..., true) lasts until the end of the
-- caller's transaction, not of the call).
SELECT current_setting('role') AS role,
       current_setting('request.jwt.claims', true) AS claims;

-- name: restore_identity
-- Puts back what current_identity saved. 'none' is RESET ROLE; a NULL claims
-- value resets the setting to its default.
SELECT set_config('role', %(role)s::text, true),
       set_config('request.jwt.claims', %(claims)s::text, true);

-- ---------------------------------------------------------------------------
-- The worker's queries (service_role). Each is one function call.
-- ---------------------------------------------------------------------------

-- name: claim_jobs
-- The claim's commit does not wait for its WAL flush (synchronous_commit off
-- for this transaction only), so a handler starts one disk flush sooner. Crash
-- semantics stay at-least-once: a claim lost with a PostgreSQL crash leaves the
-- job pending, and it runs again, as after a worker crash; the completion's
-- synchronous commit flushes the claim with it (WAL is written in order).
SELECT c.*
  FROM pg_catalog.set_config('synchronous_commit', 'off', true) AS nowait,
       LATERAL public.claim_jobs(
    p_worker_id => %(worker_id)s::text,
    p_limit     => %(limit)s::integer,
    p_job_types => %(job_types)s::text[]) AS c;

-- name: heartbeat_jobs
-- Returns the jobs of p_job_ids this worker no longer holds, with their status.
SELECT h.job_id, h.status
  FROM public.heartbeat_jobs(p_worker_id => %(worker_id)s::text, p_job_ids => %(job_ids)s::uuid[]) AS h;

-- name: add_job_log
SELECT public.add_job_log(
    p_job_id   => %(job_id)s::uuid,
    p_level    => %(level)s::text,
    p_message  => %(message)s::text,
    p_metadata => %(metadata)s::jsonb);

-- name: update_job_progress
SELECT public.update_job_progress(
    p_job_id           => %(job_id)s::uuid,
    p_progress_percent => %(percent)s::integer,
    p_progress_message => %(message)s::text,
    p_worker_id        => %(worker_id)s::text,
    p_attempt          => %(attempt)s::integer);

-- name: complete_jobs
-- p_attempts: the attempt each result is for; a job running another attempt
-- (claimed again since) is not completed by it (completed = false).
SELECT c.job_id, c.completed
  FROM public.complete_jobs(
    p_worker_id => %(worker_id)s::text,
    p_job_ids   => %(job_ids)s::uuid[],
    p_results   => %(results)s::jsonb[],
    p_attempts  => %(attempts)s::integer[]) AS c;

-- name: complete_job
SELECT public.complete_job(
    p_job_id    => %(job_id)s::uuid,
    p_result    => %(result)s::jsonb,
    p_worker_id => %(worker_id)s::text,
    p_attempt   => %(attempt)s::integer);

-- name: fail_job
SELECT public.fail_job(
    p_job_id        => %(job_id)s::uuid,
    p_error_message => %(message)s::text,
    p_error_code    => %(code)s::text,
    p_retryable     => %(retryable)s::boolean,
    p_worker_id     => %(worker_id)s::text,
    p_attempt       => %(attempt)s::integer);

-- name: release_jobs
SELECT public.release_jobs(p_worker_id => %(worker_id)s::text, p_job_ids => %(job_ids)s::uuid[]);

-- name: enqueue_periodic
-- One job per tick: the tick is in params, so dedup finds a job another
-- leader already made for it.
SELECT f.job_id, f.created
  FROM public.find_or_create_job(
    p_user_id       => %(user_id)s::uuid,
    p_job_type      => %(job_type)s::text,
    p_params        => %(params)s::jsonb,
    p_dedupe_window => %(window)s::interval,
    p_priority      => %(priority)s::integer) AS f;
