-- jobq 0002: three fixes to 0001 (which is released and never edited).
--
-- 1. retry_job of a job that used all 26 attempts of max_retries 25 broke the
--    CHECK on max_retries (23514). It now grants one more run within the caps.
-- 2. create_jobs let a field's cast fail with its own class-22 code (22003,
--    22007, 22008, 22009, 22P02) and, on PostgreSQL 15, make_interval wrap a
--    huge ttl round. Every field is now validated: 22023 naming the element.
--    jobq_new_job (create_job, find_or_create_job) refuses a ttl that takes
--    expires_at past the end of time with 22023 instead of 22008.
-- 3. A worker's write for attempt N could land on attempt N + 1 of the same
--    job when the same worker had claimed it again meanwhile. The worker
--    functions take the attempt they write for (p_attempt, p_attempts for the
--    batch): a write for an attempt that is no longer current is refused with
--    55000, like one from a worker that does not hold the job.
--
-- Signatures that gain a parameter are dropped and created again (CREATE OR
-- REPLACE would add an overload); their privileges are set again at the end,
-- exactly as 0001 set them.

-- ---------------------------------------------------------------------------
-- 1. retry_job
-- ---------------------------------------------------------------------------
-- Manual retry of a failed job (dashboard "retry"), now, whatever its backoff.
-- The owner may retry their own job. One more run is granted when the job had
-- used all its attempts: max_retries is raised to attempts, up to its cap of
-- 25; at the cap (26 attempts of max_retries 25) attempts goes back to 25 so
-- that the next run is the 26th again. 0 <= attempts <= max_retries + 1 holds.
CREATE OR REPLACE FUNCTION public.retry_job(p_job_id uuid)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
    v_max_retries integer;
BEGIN
    IF v_job.status <> 'failed' THEN
        RAISE EXCEPTION 'job % is %: only failed jobs can be retried', p_job_id, v_job.status USING ERRCODE = '55000';
    END IF;
    IF NOT public.jobq_caller_is_service() THEN
        PERFORM public.jobq_check_rate_limit(v_job.user_id, 1);
    END IF;
    v_max_retries := least(greatest(v_job.max_retries, v_job.attempts), 25);
    UPDATE public.job_queue
       SET status = 'pending', next_retry_at = NULL, worker_id = NULL, heartbeat_at = NULL,
           progress_percent = 0, progress_message = NULL, completed_at = NULL,
           max_retries = v_max_retries,
           attempts = least(attempts, v_max_retries)
     WHERE id = p_job_id;
    RETURN 'pending';
END
$$;

-- ---------------------------------------------------------------------------
-- 2. create_jobs and jobq_new_job
-- ---------------------------------------------------------------------------
-- Validates the shape of a new job and returns it ready to insert.
CREATE OR REPLACE FUNCTION public.jobq_new_job(
    p_user_id uuid, p_job_type text, p_params jsonb, p_priority integer,
    p_max_retries integer, p_run_after timestamptz, p_ttl interval)
RETURNS public.job_queue
LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue;
    v_max_bytes integer;
    v_from timestamptz;
BEGIN
    IF p_job_type IS NULL OR p_job_type !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'invalid job_type %', coalesce(quote_literal(p_job_type), 'NULL') USING ERRCODE = '22023',
            HINT = '1-100 characters: letters, digits, _ . : -';
    END IF;
    IF p_params IS NULL OR jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'params must be a JSON object, got %', coalesce(jsonb_typeof(p_params), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    SELECT max_params_bytes INTO v_max_bytes FROM public.job_queue_config;
    PERFORM public.jobq_check_json_size(p_params, v_max_bytes, 'params');
    IF p_priority IS NULL OR p_priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'priority must be between -100 and 100' USING ERRCODE = '22023';
    END IF;
    -- Tenants share one queue: only trusted callers may jump it.
    IF p_priority > 0 AND NOT public.jobq_caller_is_service() THEN
        RAISE EXCEPTION 'only service callers may set a priority above 0' USING ERRCODE = '42501';
    END IF;
    IF p_max_retries IS NULL OR p_max_retries NOT BETWEEN 0 AND 25 THEN
        RAISE EXCEPTION 'max_retries must be between 0 and 25' USING ERRCODE = '22023';
    END IF;
    IF p_ttl IS NOT NULL AND p_ttl <= interval '0' THEN
        RAISE EXCEPTION 'ttl must be positive' USING ERRCODE = '22023';
    END IF;
    v_job.id := gen_random_uuid();
    v_job.user_id := p_user_id;
    v_job.job_type := p_job_type;
    v_job.status := 'pending';
    v_job.priority := p_priority;
    v_job.params := p_params;
    v_job.progress_percent := 0;
    v_job.attempts := 0;
    v_job.max_retries := p_max_retries;
    v_job.run_after := coalesce(p_run_after, now());
    v_from := greatest(v_job.run_after, now());
    IF p_ttl IS NULL OR (p_ttl < interval '1000 years' AND v_from < timestamptz '200000-01-01 00:00+00') THEN
        v_job.expires_at := v_from + p_ttl;
    ELSE
        -- only a far-off run_after or a huge ttl gets here (and pays for the block)
        BEGIN
            v_job.expires_at := v_from + p_ttl;
        EXCEPTION WHEN datetime_field_overflow THEN
            RAISE EXCEPTION 'ttl % after % is past the end of time', p_ttl, v_from USING ERRCODE = '22023';
        END;
    END IF;
    v_job.created_at := now();
    v_job.updated_at := now();
    RETURN v_job;
END
$$;

-- Bulk create in one call: p_jobs is a JSON array of objects with job_type and
-- optional params, priority, max_retries, run_after, ttl (seconds) and, for
-- service callers, user_id. All or nothing. Returns ids in input order.
-- Every element is checked as create_job checks its arguments, and a refusal
-- names the element (p_jobs[i], from 0): a field that is not a value of its
-- type, or out of its range, is 22023 naming the field (a malformed user_id is
-- 22P02, as for every uuid argument).
CREATE OR REPLACE FUNCTION public.create_jobs(p_user_id uuid, p_jobs jsonb)
RETURNS TABLE (idx bigint, job_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
    v_count integer;
    v_jobs public.job_queue[] := '{}';
    v_job public.job_queue;
    v_e jsonb;
    v_n integer;
    v_field text;
    v_uid uuid;
    v_priority integer;
    v_max_retries integer;
    v_run_after timestamptz;
    v_secs double precision;
    v_ttl interval;
    v_state text;
    v_message text;
    v_hint text;
BEGIN
    IF p_jobs IS NULL OR jsonb_typeof(p_jobs) <> 'array' THEN
        RAISE EXCEPTION 'p_jobs must be a JSON array of job objects' USING ERRCODE = '22023';
    END IF;
    v_count := jsonb_array_length(p_jobs);
    IF v_count > 10000 THEN
        RAISE EXCEPTION 'at most 10000 jobs per call, got %', v_count USING ERRCODE = '54000';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) AS e(v) WHERE jsonb_typeof(e.v) <> 'object') THEN
        RAISE EXCEPTION 'every element of p_jobs must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF v_user IS NULL THEN
        -- service caller creating for several users: each element names its user
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) AS e(v) WHERE (e.v ->> 'user_id') IS NULL) THEN
            RAISE EXCEPTION 'with p_user_id NULL every job needs a user_id' USING ERRCODE = '22023';
        END IF;
    END IF;

    FOR v_e, v_n IN SELECT t.e, t.n FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS t(e, n) LOOP
        BEGIN
            v_field := 'user_id';
            v_uid := coalesce((v_e ->> 'user_id')::uuid, v_user);
            v_field := 'priority';
            v_priority := coalesce((v_e ->> 'priority')::integer, 0);
            v_field := 'max_retries';
            v_max_retries := coalesce((v_e ->> 'max_retries')::integer, 3);
            v_field := 'run_after';
            v_run_after := (v_e ->> 'run_after')::timestamptz;
            v_field := 'ttl';
            IF v_e ? 'ttl' THEN
                v_secs := (v_e ->> 'ttl')::double precision;
                -- make_interval wraps round past ~9.2e12 s on PostgreSQL 15; NaN fails too
                IF NOT (abs(v_secs) < 1e12) THEN
                    RAISE EXCEPTION 'ttl out of range' USING ERRCODE = '22008';
                END IF;
                v_ttl := make_interval(secs => v_secs);
            ELSE
                v_ttl := interval '24 hours';
            END IF;
            v_field := NULL;
            v_job := public.jobq_new_job(
                v_uid, v_e ->> 'job_type', coalesce(v_e -> 'params', '{}'::jsonb),
                v_priority, v_max_retries, v_run_after, v_ttl);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                    v_hint = PG_EXCEPTION_HINT;
            IF v_field = 'user_id' THEN
                -- a malformed uuid is 22P02, as for every uuid argument
                RAISE EXCEPTION 'p_jobs[%]: invalid user_id: %', v_n - 1, v_message USING ERRCODE = v_state;
            ELSIF v_field IS NOT NULL THEN
                RAISE EXCEPTION 'p_jobs[%]: invalid %: %', v_n - 1, v_field, v_message
                    USING ERRCODE = '22023';
            ELSIF coalesce(v_hint, '') = '' THEN
                RAISE EXCEPTION 'p_jobs[%]: %', v_n - 1, v_message USING ERRCODE = v_state;
            ELSE
                RAISE EXCEPTION 'p_jobs[%]: %', v_n - 1, v_message USING ERRCODE = v_state, HINT = v_hint;
            END IF;
        END;
        IF v_user IS NOT NULL AND v_uid IS DISTINCT FROM v_user THEN
            RAISE EXCEPTION 'may not create jobs for another user' USING ERRCODE = '42501';
        END IF;
        v_jobs[v_n] := v_job;
    END LOOP;
    IF v_user IS NOT NULL THEN
        PERFORM public.jobq_check_rate_limit(v_user, v_count);
    END IF;

    INSERT INTO public.job_queue SELECT * FROM unnest(v_jobs);
    RETURN QUERY SELECT u.ordinality, u.id FROM unnest(v_jobs) WITH ORDINALITY AS u ORDER BY u.ordinality;
END
$$;

-- ---------------------------------------------------------------------------
-- 3. The attempt a worker writes for
-- ---------------------------------------------------------------------------
DROP FUNCTION public.jobq_check_holder(public.job_queue, text);
DROP FUNCTION public.update_job_progress(uuid, integer, text, text);
DROP FUNCTION public.complete_job(uuid, jsonb, text);
DROP FUNCTION public.complete_jobs(text, uuid[], jsonb[]);
DROP FUNCTION public.fail_job(uuid, text, text, boolean, text);

-- A worker may only change a job it holds; NULL p_worker_id is an admin override.
-- p_attempt (the job's attempts when the worker claimed it) makes a write of an
-- earlier attempt fail, should the same worker hold the job again since.
CREATE FUNCTION public.jobq_check_holder(p_job public.job_queue, p_worker_id text, p_attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
BEGIN
    IF p_job.status <> 'processing' THEN
        RAISE EXCEPTION 'job % is %, not processing', p_job.id, p_job.status USING ERRCODE = '55000';
    END IF;
    IF p_worker_id IS NOT NULL AND p_job.worker_id IS DISTINCT FROM p_worker_id THEN
        RAISE EXCEPTION 'job % is held by another worker', p_job.id USING ERRCODE = '55000';
    END IF;
    IF p_attempt IS NOT NULL AND p_job.attempts IS DISTINCT FROM p_attempt THEN
        RAISE EXCEPTION 'job % is running attempt %, not attempt %', p_job.id, p_job.attempts, p_attempt
            USING ERRCODE = '55000';
    END IF;
END
$$;

CREATE FUNCTION public.update_job_progress(
    p_job_id uuid,
    p_progress_percent integer,
    p_progress_message text DEFAULT NULL,
    p_worker_id text DEFAULT NULL,
    p_attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
BEGIN
    IF p_progress_percent IS NULL OR p_progress_percent NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'progress must be between 0 and 100, got %', coalesce(p_progress_percent::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF length(p_progress_message) > 1000 THEN
        RAISE EXCEPTION 'progress message over 1000 characters' USING ERRCODE = '54000';
    END IF;
    PERFORM public.jobq_check_holder(v_job, p_worker_id, p_attempt);
    UPDATE public.job_queue
       SET progress_percent = p_progress_percent,
           progress_message = p_progress_message,
           heartbeat_at = now()
     WHERE id = p_job_id;
END
$$;

CREATE FUNCTION public.complete_job(
    p_job_id uuid,
    p_result jsonb DEFAULT NULL,
    p_worker_id text DEFAULT NULL,
    p_attempt integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
    v_max_bytes integer;
BEGIN
    SELECT max_result_bytes INTO v_max_bytes FROM public.job_queue_config;
    PERFORM public.jobq_check_json_size(p_result, v_max_bytes, 'result');
    PERFORM public.jobq_check_holder(v_job, p_worker_id, p_attempt);
    UPDATE public.job_queue
       SET status = 'completed', result = p_result, error_message = NULL, error_code = NULL
     WHERE id = p_job_id;
END
$$;

-- Completes many jobs of one worker in one statement (the worker's hot path).
-- Jobs it no longer holds (cancelled meanwhile, rescued by stuck detection),
-- and jobs whose attempt is no longer the one in p_attempts (same length as
-- p_job_ids; a NULL element or p_attempts NULL checks no attempt), are skipped
-- and come back with completed = false; nothing is completed twice.
CREATE FUNCTION public.complete_jobs(
    p_worker_id text,
    p_job_ids uuid[],
    p_results jsonb[],
    p_attempts integer[] DEFAULT NULL)
RETURNS TABLE (job_id uuid, completed boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_max_bytes integer;
BEGIN
    IF p_worker_id IS NULL OR p_worker_id = '' THEN
        RAISE EXCEPTION 'p_worker_id is required' USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_job_ids) IS DISTINCT FROM cardinality(p_results) THEN
        RAISE EXCEPTION 'p_job_ids and p_results must have the same length' USING ERRCODE = '22023';
    END IF;
    IF p_attempts IS NOT NULL AND cardinality(p_attempts) IS DISTINCT FROM cardinality(p_job_ids) THEN
        RAISE EXCEPTION 'p_job_ids and p_attempts must have the same length' USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_job_ids) <> (SELECT count(DISTINCT x) FROM unnest(p_job_ids) AS x) THEN
        RAISE EXCEPTION 'p_job_ids has duplicates' USING ERRCODE = '22023';
    END IF;
    SELECT max_result_bytes INTO v_max_bytes FROM public.job_queue_config;
    PERFORM public.jobq_check_json_size(r, v_max_bytes, 'result') FROM unnest(p_results) AS r;
    RETURN QUERY
    WITH done AS (
        -- unnest pads a NULL (empty) p_attempts with NULLs: no attempt check
        UPDATE public.job_queue j
           SET status = 'completed', result = r.result, error_message = NULL, error_code = NULL
          FROM unnest(p_job_ids, p_results, p_attempts) AS r(id, result, attempt)
         WHERE j.id = r.id AND j.worker_id = p_worker_id AND j.status = 'processing'
           AND (r.attempt IS NULL OR j.attempts = r.attempt)
        RETURNING j.id)
    SELECT ids.id, ids.id IN (SELECT id FROM done)
      FROM unnest(p_job_ids) AS ids(id);
END
$$;

-- Fails the running attempt. While attempts remain (attempts <= max_retries)
-- and the error is retryable, next_retry_at is set with exponential backoff
-- (retry_base_delay * 2^(attempts-1), capped at retry_max_delay) and
-- retry_failed_jobs moves the job back to pending when it is due.
-- Returns next_retry_at (NULL when the failure is final).
CREATE FUNCTION public.fail_job(
    p_job_id uuid,
    p_error_message text,
    p_error_code text DEFAULT NULL,
    p_retryable boolean DEFAULT true,
    p_worker_id text DEFAULT NULL,
    p_attempt integer DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
    v_cfg public.job_queue_config;
    v_next timestamptz;
BEGIN
    PERFORM public.jobq_check_holder(v_job, p_worker_id, p_attempt);
    SELECT * INTO v_cfg FROM public.job_queue_config;
    IF coalesce(p_retryable, true) AND v_job.attempts <= v_job.max_retries THEN
        v_next := now() + least(v_cfg.retry_base_delay * power(2, greatest(v_job.attempts, 1) - 1),
                                v_cfg.retry_max_delay);
    END IF;
    UPDATE public.job_queue
       SET status = 'failed',
           error_message = left(coalesce(p_error_message, 'unknown error'), 4000),
           error_code = left(p_error_code, 100),
           next_retry_at = v_next
     WHERE id = p_job_id;
    RETURN v_next;
END
$$;

-- The privileges 0001 gave these functions: none for the helper, EXECUTE for
-- service_role only for the worker functions (Supabase's default grants of a
-- new function are taken back first).
REVOKE ALL ON FUNCTION public.jobq_check_holder(public.job_queue, text, integer)
    FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON FUNCTION
    public.update_job_progress(uuid, integer, text, text, integer),
    public.complete_job(uuid, jsonb, text, integer),
    public.complete_jobs(text, uuid[], jsonb[], integer[]),
    public.fail_job(uuid, text, text, boolean, text, integer)
    FROM PUBLIC, anon, authenticated, service_role;
GRANT EXECUTE ON FUNCTION
    public.update_job_progress(uuid, integer, text, text, integer),
    public.complete_job(uuid, jsonb, text, integer),
    public.complete_jobs(text, uuid[], jsonb[], integer[]),
    public.fail_job(uuid, text, text, boolean, text, integer)
    TO service_role;
