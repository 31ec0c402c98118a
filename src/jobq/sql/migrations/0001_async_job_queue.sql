-- jobq 0001: the async job queue (spec: 002_async_job_queue.sql).
--
-- Applies unchanged on Supabase and on plain PostgreSQL 15+. Every rule about
-- jobs lives here: state machine, per-user limit, dedup, result cache, retry
-- with backoff, expiry, stuck detection, and who may see or touch what.
--
-- Error codes raised by jobq functions (stable, documented in the README):
--   42501 insufficient_privilege          caller may not act for that user / job
--   22023 invalid_parameter_value         bad argument (limit, order, progress, json shape)
--   54000 program_limit_exceeded          params/result/message over the size cap
--   P0002 no_data_found                   unknown job (or another user's: never revealed)
--   55000 object_not_in_prerequisite_state illegal status transition / job not held
--   53400 configuration_limit_exceeded    per-user active job limit reached

-- ---------------------------------------------------------------------------
-- SECTION 1: Supabase compatibility (create only what is missing)
-- ---------------------------------------------------------------------------
DO $bootstrap$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                IF r = 'service_role' THEN
                    EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT BYPASSRLS', r);
                ELSE
                    EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT', r);
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by a migration of another database
            END;
        END IF;
    END LOOP;

    IF to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    END IF;

    -- Same definitions as Supabase's: an ended set_config(..., true) reads as ''.
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
        LANGUAGE sql STABLE SET search_path = ''
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.sub', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
            )::uuid
        $f$;
        GRANT EXECUTE ON FUNCTION auth.uid() TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
        LANGUAGE sql STABLE SET search_path = ''
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
            )::text
        $f$;
        GRANT EXECUTE ON FUNCTION auth.role() TO anon, authenticated, service_role;
    END IF;
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
        LANGUAGE sql STABLE SET search_path = ''
        AS $f$
            SELECT coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $f$;
        GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated, service_role;
    END IF;
END
$bootstrap$;

-- ---------------------------------------------------------------------------
-- SECTION 2: Tables
-- ---------------------------------------------------------------------------
CREATE TABLE public.job_queue (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid        NOT NULL,
    job_type         text        NOT NULL
                     CONSTRAINT job_queue_job_type_check CHECK (job_type ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'),
    status           text        NOT NULL DEFAULT 'pending'
                     CONSTRAINT job_queue_status_check
                     CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired')),
    priority         smallint    NOT NULL DEFAULT 0
                     CONSTRAINT job_queue_priority_check CHECK (priority BETWEEN -100 AND 100),
    params           jsonb       NOT NULL DEFAULT '{}'::jsonb
                     CONSTRAINT job_queue_params_check CHECK (jsonb_typeof(params) = 'object'),
    result           jsonb,
    progress_percent smallint    NOT NULL DEFAULT 0
                     CONSTRAINT job_queue_progress_check CHECK (progress_percent BETWEEN 0 AND 100),
    progress_message text        CONSTRAINT job_queue_progress_message_check CHECK (length(progress_message) <= 1000),
    error_message    text        CONSTRAINT job_queue_error_message_check CHECK (length(error_message) <= 4000),
    error_code       text        CONSTRAINT job_queue_error_code_check CHECK (length(error_code) <= 100),
    attempts         integer     NOT NULL DEFAULT 0,
    max_retries      integer     NOT NULL DEFAULT 3
                     CONSTRAINT job_queue_max_retries_check CHECK (max_retries BETWEEN 0 AND 25),
    next_retry_at    timestamptz,
    run_after        timestamptz NOT NULL DEFAULT now(),
    worker_id        text        CONSTRAINT job_queue_worker_id_check CHECK (length(worker_id) <= 200),
    heartbeat_at     timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- attempts counts starts: the first run plus at most max_retries retries.
    CONSTRAINT job_queue_attempts_check CHECK (attempts BETWEEN 0 AND max_retries + 1),
    CONSTRAINT job_queue_processing_check CHECK (status <> 'processing' OR worker_id IS NOT NULL)
);

COMMENT ON TABLE public.job_queue IS 'jobq: one row per job. Change it through the jobq functions; the state machine is enforced by trigger job_queue_updated_at.';

-- Logs are range partitioned by created_at (monthly) so that old logs are
-- dropped a partition at a time instead of deleted row by row. job_id is not a
-- foreign key: cascading deletes into 100M log rows would make job cleanup
-- slow; cleanup_old_jobs removes a job's logs in the same statement.
CREATE TABLE public.job_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    job_id     uuid        NOT NULL,
    level      text        NOT NULL DEFAULT 'info'
               CONSTRAINT job_log_level_check CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message    text        NOT NULL
               CONSTRAINT job_log_message_check CHECK (length(message) BETWEEN 1 AND 10000),
    metadata   jsonb       NOT NULL DEFAULT '{}'::jsonb
               CONSTRAINT job_log_metadata_check CHECK (jsonb_typeof(metadata) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- Rows outside every monthly partition land here rather than failing an insert.
CREATE TABLE public.job_log_default PARTITION OF public.job_log DEFAULT;

COMMENT ON TABLE public.job_log IS 'jobq: log lines of jobs, partitioned monthly by created_at.';

-- Tunables, one row. Only the owner and service_role can read or change it.
CREATE TABLE public.job_queue_config (
    id                       boolean PRIMARY KEY DEFAULT true CONSTRAINT job_queue_config_single_row CHECK (id),
    max_active_jobs_per_user integer NOT NULL DEFAULT 10 CHECK (max_active_jobs_per_user > 0),
    max_params_bytes         integer NOT NULL DEFAULT 65536 CHECK (max_params_bytes > 0),
    max_result_bytes         integer NOT NULL DEFAULT 1048576 CHECK (max_result_bytes > 0),
    retry_base_delay         interval NOT NULL DEFAULT '10 seconds' CHECK (retry_base_delay >= interval '0'),
    retry_max_delay          interval NOT NULL DEFAULT '1 hour' CHECK (retry_max_delay >= interval '0')
);
INSERT INTO public.job_queue_config DEFAULT VALUES;

-- One row per user, locked by every rate-limited or deduplicated creation
-- (jobq_lock_user). A row lock, unlike an advisory lock, is checked against
-- the caller's snapshot: under REPEATABLE READ a concurrent creation makes the
-- later caller fail with 40001 (retry) instead of counting with stale data.
CREATE TABLE public.job_queue_user_lock (
    user_id   uuid PRIMARY KEY,
    locked_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------
-- SECTION 3: Indexes (11 on job_queue, 4 on job_log)
-- ---------------------------------------------------------------------------
-- 1. User job listing: WHERE user_id = ? [AND status = ?] ORDER BY created_at DESC, id DESC.
CREATE INDEX idx_job_queue_user_status_created
    ON public.job_queue (user_id, status, created_at DESC, id DESC);
-- 2. Worker pickup: highest priority first, then FIFO, only pending rows.
CREATE INDEX idx_job_queue_pending_pickup
    ON public.job_queue (priority DESC, created_at, id)
    WHERE status = 'pending';
-- 3. A worker's running jobs (heartbeat, release on shutdown).
CREATE INDEX idx_job_queue_worker_active
    ON public.job_queue (worker_id)
    WHERE status = 'processing';
-- 4. Finished jobs by age, for cleanup_old_jobs.
CREATE INDEX idx_job_queue_cleanup
    ON public.job_queue (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'expired');
-- 5. Failed jobs waiting for their backoff, for retry_failed_jobs.
CREATE INDEX idx_job_queue_retry_eligible
    ON public.job_queue (next_retry_at)
    WHERE status = 'failed' AND next_retry_at IS NOT NULL;
-- 6. Queue depth by type for the dashboard (unfinished work only).
CREATE INDEX idx_job_queue_type_status
    ON public.job_queue (job_type, status)
    WHERE status IN ('pending', 'processing', 'failed');
-- 7. Per-user active job count for the rate limit (index-only count). A failed
-- job with a retry scheduled will run again, so it counts as active too.
CREATE INDEX idx_job_queue_user_active
    ON public.job_queue (user_id)
    WHERE status IN ('pending', 'processing') OR (status = 'failed' AND next_retry_at IS NOT NULL);
-- 8. Never-started pending jobs by expiry, for expire_stale_jobs.
CREATE INDEX idx_job_queue_expiration
    ON public.job_queue (expires_at)
    WHERE status = 'pending' AND expires_at IS NOT NULL AND started_at IS NULL;
-- 9. Running jobs by last heartbeat, for detect_stuck_jobs.
CREATE INDEX idx_job_queue_stuck_detection
    ON public.job_queue (heartbeat_at)
    WHERE status = 'processing';
-- 10. Params containment: dedup and cache lookups, and admin search by params.
CREATE INDEX idx_job_queue_params_gin
    ON public.job_queue USING gin (params jsonb_path_ops);
-- 11. Result containment search.
CREATE INDEX idx_job_queue_result_gin
    ON public.job_queue USING gin (result jsonb_path_ops)
    WHERE result IS NOT NULL;

-- jobq's own: two listings the spec's eleven leave to a sort of every row.
-- A user's jobs newest first without a status filter (the default listing).
CREATE INDEX idx_job_queue_user_created
    ON public.job_queue (user_id, created_at DESC, id DESC);
-- Every user's jobs newest first (the service view of a dashboard).
CREATE INDEX idx_job_queue_created
    ON public.job_queue (created_at DESC, id DESC);

-- job_log: created on the parent, so every partition gets them.
CREATE INDEX idx_job_log_job_time
    ON public.job_log (job_id, created_at DESC, id DESC);
CREATE INDEX idx_job_log_errors
    ON public.job_log (created_at DESC)
    WHERE level = 'error';
CREATE INDEX idx_job_log_message_fts
    ON public.job_log USING gin (to_tsvector('simple'::regconfig, message));
CREATE INDEX idx_job_log_metadata_gin
    ON public.job_log USING gin (metadata jsonb_path_ops);

-- ---------------------------------------------------------------------------
-- SECTION 4: Tuning
-- ---------------------------------------------------------------------------
ALTER TABLE public.job_queue SET (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 10,
    autovacuum_vacuum_cost_limit = 1000
);
-- toast_tuple_target is a per-heap setting: partitioned parents have no heap,
-- so it is set on every partition (create_job_log_partitions does the same).
ALTER TABLE public.job_log_default SET (toast_tuple_target = 8160);
ALTER TABLE public.job_queue ALTER COLUMN status SET STATISTICS 1000;
ALTER TABLE public.job_queue ALTER COLUMN job_type SET STATISTICS 1000;
ALTER TABLE public.job_queue ALTER COLUMN user_id SET STATISTICS 500;

-- ---------------------------------------------------------------------------
-- SECTION 5: Internal helpers (not callable by API roles)
-- ---------------------------------------------------------------------------
-- Is the caller trusted with every user's jobs? True for service_role and for
-- a session that has not switched role and logged in as a superuser or a
-- BYPASSRLS role (the migration owner, psql, a worker on DATABASE_URL).
-- current_setting('role') survives SECURITY DEFINER and cannot be set to a
-- role the session is not a member of, so it is safe to trust.
CREATE FUNCTION public.jobq_caller_is_service() RETURNS boolean
LANGUAGE sql STABLE SET search_path = ''
AS $$
    SELECT CASE current_setting('role')
        WHEN 'service_role' THEN true
        WHEN 'none' THEN coalesce(
            (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = session_user),
            false)
        ELSE false
    END
$$;

-- The user a call acts for. A user caller may only name itself (NULL means
-- itself); service callers may name anyone, or NULL for "all users" where the
-- function allows it.
CREATE FUNCTION public.jobq_acting_user(p_user_id uuid, p_allow_all boolean DEFAULT false)
RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
DECLARE
    v_uid uuid;
BEGIN
    IF public.jobq_caller_is_service() THEN
        IF p_user_id IS NULL AND NOT p_allow_all THEN
            RAISE EXCEPTION 'p_user_id is required' USING ERRCODE = '22023';
        END IF;
        RETURN p_user_id;
    END IF;
    v_uid := auth.uid();
    IF v_uid IS NULL THEN
        RAISE EXCEPTION 'not authenticated' USING ERRCODE = '42501',
            HINT = 'call as role authenticated with request.jwt.claims carrying sub';
    END IF;
    IF p_user_id IS NOT NULL AND p_user_id <> v_uid THEN
        RAISE EXCEPTION 'may not act for another user' USING ERRCODE = '42501';
    END IF;
    RETURN v_uid;
END
$$;

-- Locks and returns a job the caller may act on. Another user's job reads as
-- unknown (P0002), so its existence is never revealed.
CREATE FUNCTION public.jobq_lock_job(p_job_id uuid)
RETURNS public.job_queue
LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue;
BEGIN
    IF p_job_id IS NULL THEN
        RAISE EXCEPTION 'p_job_id is required' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_job FROM public.job_queue WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND OR (NOT public.jobq_caller_is_service() AND v_job.user_id IS DISTINCT FROM auth.uid()) THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'P0002';
    END IF;
    RETURN v_job;
END
$$;

-- A worker may only change a job it holds; NULL p_worker_id is an admin override.
CREATE FUNCTION public.jobq_check_holder(p_job public.job_queue, p_worker_id text)
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
END
$$;

CREATE FUNCTION public.jobq_check_json_size(p_value jsonb, p_limit integer, p_what text)
RETURNS void
LANGUAGE plpgsql SET search_path = ''
AS $$
BEGIN
    IF p_value IS NOT NULL AND octet_length(p_value::text) > p_limit THEN
        RAISE EXCEPTION '% is % bytes, over the limit of % bytes', p_what, octet_length(p_value::text), p_limit
            USING ERRCODE = '54000';
    END IF;
END
$$;

-- The per-user active job limit: pending, processing and failed-awaiting-retry
-- jobs count. Creations of one user are serialised (jobq_lock_user) so that
-- concurrent calls cannot both pass the count. Service callers are trusted
-- and not limited.
CREATE FUNCTION public.jobq_check_rate_limit(p_user_id uuid, p_new_jobs integer)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $$
DECLARE
    v_limit  integer;
    v_active integer;
BEGIN
    IF public.jobq_caller_is_service() THEN
        RETURN;
    END IF;
    PERFORM public.jobq_lock_user(p_user_id);
    SELECT max_active_jobs_per_user INTO v_limit FROM public.job_queue_config;
    SELECT count(*) INTO v_active FROM (
        SELECT 1 FROM public.job_queue
        WHERE user_id = p_user_id
          AND (status IN ('pending', 'processing') OR (status = 'failed' AND next_retry_at IS NOT NULL))
        LIMIT v_limit
    ) a;
    IF v_active + p_new_jobs > v_limit THEN
        RAISE EXCEPTION 'rate limit: % active jobs, the limit is %', v_active, v_limit
            USING ERRCODE = '53400', HINT = 'wait for active jobs to finish';
    END IF;
END
$$;

-- Serialises job creation for one user until the end of the transaction.
CREATE FUNCTION public.jobq_lock_user(p_user_id uuid)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = ''
AS $$
    INSERT INTO public.job_queue_user_lock AS l (user_id) VALUES (p_user_id)
    ON CONFLICT (user_id) DO UPDATE SET locked_at = now();
$$;

-- Validates the shape of a new job and returns it ready to insert.
CREATE FUNCTION public.jobq_new_job(
    p_user_id uuid, p_job_type text, p_params jsonb, p_priority integer,
    p_max_retries integer, p_run_after timestamptz, p_ttl interval)
RETURNS public.job_queue
LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue;
    v_max_bytes integer;
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
    v_job.expires_at := greatest(v_job.run_after, now()) + p_ttl;
    v_job.created_at := now();
    v_job.updated_at := now();
    RETURN v_job;
END
$$;

-- ---------------------------------------------------------------------------
-- SECTION 6: Triggers (updated_at + state machine, realtime notify)
-- ---------------------------------------------------------------------------
-- The one place the state machine lives; every UPDATE passes through it,
-- whether from a jobq function, a user's direct cancel or psql:
--   pending -> processing | cancelled | expired
--   processing -> completed | failed | cancelled
--   failed -> pending (retry)
CREATE FUNCTION public.job_queue_before_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = ''
AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT (
               (OLD.status = 'pending'    AND NEW.status IN ('processing', 'cancelled', 'expired'))
            OR (OLD.status = 'processing' AND NEW.status IN ('completed', 'failed', 'cancelled'))
            OR (OLD.status = 'failed'     AND NEW.status = 'pending')
        ) THEN
            RAISE EXCEPTION 'illegal job status transition % -> % (job %)', OLD.status, NEW.status, OLD.id
                USING ERRCODE = '55000';
        END IF;
        IF NEW.status IN ('completed', 'failed', 'cancelled', 'expired') THEN
            NEW.completed_at := now();
        ELSE
            NEW.completed_at := NULL;  -- runnable again
        END IF;
        IF NEW.status = 'cancelled' THEN
            NEW.error_code := coalesce(NEW.error_code, 'CANCELLED');
        END IF;
        IF NEW.status IN ('completed', 'cancelled', 'expired') THEN
            NEW.next_retry_at := NULL;
        END IF;
        IF NEW.status = 'completed' THEN
            NEW.progress_percent := 100;
        END IF;
    END IF;
    IF NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'a job''s id and user_id cannot change' USING ERRCODE = '55000';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER job_queue_updated_at
    BEFORE UPDATE ON public.job_queue
    FOR EACH ROW EXECUTE FUNCTION public.job_queue_before_update();

-- pg_notify payloads are capped at 8000 bytes: a result that would not fit is
-- left out (result_omitted = true) and clients read it with a status call.
CREATE FUNCTION public.notify_job_status_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_payload jsonb;
    v_text text;
BEGIN
    -- release_jobs passes through failed on its way back to pending: not news
    IF NEW.status = 'failed' AND NEW.error_code = 'RELEASED' THEN
        RETURN NULL;
    END IF;
    v_payload := jsonb_build_object(
        'event', lower(TG_OP),
        'job_id', NEW.id,
        'user_id', NEW.user_id,
        'job_type', NEW.job_type,
        'status', NEW.status,
        'progress_percent', NEW.progress_percent,
        'progress_message', left(NEW.progress_message, 200),
        'error_message', left(NEW.error_message, 500),
        'error_code', NEW.error_code,
        'attempts', NEW.attempts,
        'updated_at', NEW.updated_at);
    IF NEW.status = 'completed' AND NEW.result IS NOT NULL THEN
        IF octet_length(v_payload::text) + octet_length(NEW.result::text) + 30 <= 7900 THEN
            v_payload := v_payload || jsonb_build_object('result', NEW.result);
        ELSE
            v_payload := v_payload || jsonb_build_object('result_omitted', true);
        END IF;
    END IF;
    v_text := v_payload::text;
    PERFORM pg_notify('job_status_changed', v_text);
    -- Supabase Realtime: a private per-user topic, only where the service exists.
    IF to_regprocedure('realtime.send(jsonb,text,text,boolean)') IS NOT NULL THEN
        EXECUTE 'SELECT realtime.send($1, $2, $3, true)'
            USING v_payload, 'job_status_changed', 'jobs:' || NEW.user_id::text;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_status_change_notify
    AFTER INSERT OR UPDATE OF status, progress_percent, progress_message, result
    ON public.job_queue
    FOR EACH ROW EXECUTE FUNCTION public.notify_job_status_change();

-- ---------------------------------------------------------------------------
-- SECTION 7: Core management functions (11)
-- ---------------------------------------------------------------------------
CREATE FUNCTION public.create_job(
    p_user_id uuid,
    p_job_type text,
    p_params jsonb DEFAULT '{}'::jsonb,
    p_priority integer DEFAULT 0,
    p_max_retries integer DEFAULT 3,
    p_run_after timestamptz DEFAULT NULL,
    p_ttl interval DEFAULT interval '24 hours')
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id);
    v_job public.job_queue;
BEGIN
    v_job := public.jobq_new_job(v_user, p_job_type, p_params, p_priority, p_max_retries, p_run_after, p_ttl);
    PERFORM public.jobq_check_rate_limit(v_user, 1);
    INSERT INTO public.job_queue SELECT (v_job).*;
    RETURN v_job.id;
END
$$;

-- Bulk create in one call: p_jobs is a JSON array of objects with job_type and
-- optional params, priority, max_retries, run_after, ttl (seconds) and, for
-- service callers, user_id. All or nothing. Returns ids in input order.
CREATE FUNCTION public.create_jobs(p_user_id uuid, p_jobs jsonb)
RETURNS TABLE (idx bigint, job_id uuid)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
    v_count integer;
    v_uid uuid;
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
    ELSE
        IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) AS e(v)
                   WHERE (e.v ->> 'user_id') IS NOT NULL AND (e.v ->> 'user_id')::uuid IS DISTINCT FROM v_user) THEN
            RAISE EXCEPTION 'may not create jobs for another user' USING ERRCODE = '42501';
        END IF;
        PERFORM public.jobq_check_rate_limit(v_user, v_count);
    END IF;

    RETURN QUERY
    WITH input AS (
        SELECT e, n FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS t(e, n)
    ), built AS (
        SELECT n, public.jobq_new_job(
                   coalesce((e ->> 'user_id')::uuid, v_user),
                   e ->> 'job_type',
                   coalesce(e -> 'params', '{}'::jsonb),
                   coalesce((e ->> 'priority')::integer, 0),
                   coalesce((e ->> 'max_retries')::integer, 3),
                   (e ->> 'run_after')::timestamptz,
                   CASE WHEN e ? 'ttl' THEN make_interval(secs => (e ->> 'ttl')::double precision)
                        ELSE interval '24 hours' END) AS j
        FROM input
    ), ins AS (
        -- a data-modifying CTE always runs to completion, read or not
        INSERT INTO public.job_queue SELECT (b.j).* FROM built b ORDER BY b.n
    )
    SELECT b.n, (b.j).id FROM built b ORDER BY b.n;
END
$$;

CREATE FUNCTION public.update_job_progress(
    p_job_id uuid,
    p_progress_percent integer,
    p_progress_message text DEFAULT NULL,
    p_worker_id text DEFAULT NULL)
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
    PERFORM public.jobq_check_holder(v_job, p_worker_id);
    UPDATE public.job_queue
       SET progress_percent = p_progress_percent,
           progress_message = p_progress_message,
           heartbeat_at = now()
     WHERE id = p_job_id;
END
$$;

-- Starts one specific pending job (atomic: of two concurrent starts one wins,
-- the other gets 55000). Workers normally use claim_jobs.
CREATE FUNCTION public.start_job(p_job_id uuid, p_worker_id text)
RETURNS SETOF public.job_queue
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
BEGIN
    IF p_worker_id IS NULL OR p_worker_id = '' THEN
        RAISE EXCEPTION 'p_worker_id is required' USING ERRCODE = '22023';
    END IF;
    IF v_job.status <> 'pending' THEN
        RAISE EXCEPTION 'job % is %, not pending', p_job_id, v_job.status USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
    UPDATE public.job_queue
       SET status = 'processing', worker_id = p_worker_id, attempts = attempts + 1,
           started_at = now(), heartbeat_at = now(), next_retry_at = NULL
     WHERE id = p_job_id
    RETURNING *;
END
$$;

CREATE FUNCTION public.complete_job(p_job_id uuid, p_result jsonb DEFAULT NULL, p_worker_id text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
    v_max_bytes integer;
BEGIN
    SELECT max_result_bytes INTO v_max_bytes FROM public.job_queue_config;
    PERFORM public.jobq_check_json_size(p_result, v_max_bytes, 'result');
    PERFORM public.jobq_check_holder(v_job, p_worker_id);
    UPDATE public.job_queue
       SET status = 'completed', result = p_result, error_message = NULL, error_code = NULL
     WHERE id = p_job_id;
END
$$;

-- Completes many jobs of one worker in one statement (the worker's hot path).
-- Jobs it no longer holds (cancelled meanwhile, rescued by stuck detection)
-- are skipped and come back with completed = false; nothing is completed twice.
CREATE FUNCTION public.complete_jobs(p_worker_id text, p_job_ids uuid[], p_results jsonb[])
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
    IF cardinality(p_job_ids) <> (SELECT count(DISTINCT x) FROM unnest(p_job_ids) AS x) THEN
        RAISE EXCEPTION 'p_job_ids has duplicates' USING ERRCODE = '22023';
    END IF;
    SELECT max_result_bytes INTO v_max_bytes FROM public.job_queue_config;
    PERFORM public.jobq_check_json_size(r, v_max_bytes, 'result') FROM unnest(p_results) AS r;
    RETURN QUERY
    WITH done AS (
        UPDATE public.job_queue j
           SET status = 'completed', result = r.result, error_message = NULL, error_code = NULL
          FROM unnest(p_job_ids, p_results) AS r(id, result)
         WHERE j.id = r.id AND j.worker_id = p_worker_id AND j.status = 'processing'
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
    p_worker_id text DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
    v_cfg public.job_queue_config;
    v_next timestamptz;
BEGIN
    PERFORM public.jobq_check_holder(v_job, p_worker_id);
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

-- User-initiated cancellation of a pending or running job. A running job's
-- worker learns of it from the notification or its next heartbeat.
CREATE FUNCTION public.cancel_job(p_job_id uuid, p_user_id uuid DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
BEGIN
    IF v_user IS NOT NULL AND v_job.user_id <> v_user THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'P0002';
    END IF;
    IF v_job.status NOT IN ('pending', 'processing') THEN
        RAISE EXCEPTION 'job % is %: only pending or processing jobs can be cancelled', p_job_id, v_job.status
            USING ERRCODE = '55000';
    END IF;
    UPDATE public.job_queue SET status = 'cancelled', error_code = 'CANCELLED',
           error_message = 'cancelled by ' || CASE WHEN public.jobq_caller_is_service() THEN 'service' ELSE 'user' END
     WHERE id = p_job_id;
    RETURN 'cancelled';
END
$$;

CREATE FUNCTION public.add_job_log(
    p_job_id uuid,
    p_level text,
    p_message text,
    p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM 1 FROM public.job_queue WHERE id = p_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'P0002';
    END IF;
    IF p_level IS NULL OR p_level NOT IN ('debug', 'info', 'warning', 'error') THEN
        RAISE EXCEPTION 'level must be debug, info, warning or error' USING ERRCODE = '22023';
    END IF;
    IF p_message IS NULL OR p_message = '' THEN
        RAISE EXCEPTION 'message is required' USING ERRCODE = '22023';
    END IF;
    IF length(p_message) > 10000 THEN
        RAISE EXCEPTION 'log message over 10000 characters' USING ERRCODE = '54000';
    END IF;
    IF p_metadata IS NOT NULL AND jsonb_typeof(p_metadata) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = '22023';
    END IF;
    PERFORM public.jobq_check_json_size(p_metadata, 65536, 'metadata');
    INSERT INTO public.job_log (job_id, level, message, metadata)
    VALUES (p_job_id, p_level, p_message, coalesce(p_metadata, '{}'::jsonb))
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Paginated job list with total_count in every row. Offset pagination by
-- default; cursor pagination (keyset on created_at, id) when p_cursor_* are
-- given, in which case total_count is NULL (counting defeats the point), as
-- it is with p_with_total = false (the first page of a cursor walk).
-- p_user_id NULL lists every user's jobs (service callers only).
CREATE FUNCTION public.get_user_jobs(
    p_user_id uuid,
    p_status text DEFAULT NULL,
    p_job_type text DEFAULT NULL,
    p_limit integer DEFAULT 50,
    p_offset integer DEFAULT 0,
    p_order_by text DEFAULT 'created_at',
    p_order_dir text DEFAULT 'DESC',
    p_cursor_created_at timestamptz DEFAULT NULL,
    p_cursor_id uuid DEFAULT NULL,
    p_params_contains jsonb DEFAULT NULL,
    p_result_contains jsonb DEFAULT NULL,
    p_with_total boolean DEFAULT true)
RETURNS TABLE (
    id uuid, user_id uuid, job_type text, status text, priority smallint,
    params jsonb, result jsonb, progress_percent smallint, progress_message text,
    error_message text, error_code text, attempts integer, max_retries integer,
    next_retry_at timestamptz, run_after timestamptz, worker_id text,
    heartbeat_at timestamptz, started_at timestamptz, completed_at timestamptz,
    expires_at timestamptz, created_at timestamptz, updated_at timestamptz,
    total_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
    v_dir text := upper(coalesce(p_order_dir, 'DESC'));
    v_order text := lower(coalesce(p_order_by, 'created_at'));
    v_cursor boolean := p_cursor_created_at IS NOT NULL OR p_cursor_id IS NOT NULL;
    v_where text := 'true';
    v_sql text;
BEGIN
    IF v_order NOT IN ('created_at', 'updated_at', 'completed_at', 'priority', 'status', 'job_type', 'progress_percent') THEN
        RAISE EXCEPTION 'p_order_by must be one of created_at, updated_at, completed_at, priority, status, job_type, progress_percent'
            USING ERRCODE = '22023';
    END IF;
    IF v_dir NOT IN ('ASC', 'DESC') THEN
        RAISE EXCEPTION 'p_order_dir must be ASC or DESC' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF p_offset IS NULL OR p_offset NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'p_offset must be between 0 and 1000000' USING ERRCODE = '22023';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired') THEN
        RAISE EXCEPTION 'unknown status %', quote_literal(p_status) USING ERRCODE = '22023';
    END IF;
    IF v_cursor THEN
        IF p_cursor_created_at IS NULL OR p_cursor_id IS NULL THEN
            RAISE EXCEPTION 'a cursor needs both p_cursor_created_at and p_cursor_id' USING ERRCODE = '22023';
        END IF;
        IF v_order <> 'created_at' OR p_offset <> 0 THEN
            RAISE EXCEPTION 'cursor pagination orders by created_at and takes no offset' USING ERRCODE = '22023';
        END IF;
    END IF;

    -- Values are passed as parameters ($1..); only whitelisted words are spliced.
    IF v_user IS NOT NULL THEN v_where := v_where || ' AND j.user_id = $1'; END IF;
    IF p_status IS NOT NULL THEN v_where := v_where || ' AND j.status = $2'; END IF;
    IF p_job_type IS NOT NULL THEN v_where := v_where || ' AND j.job_type = $3'; END IF;
    IF p_params_contains IS NOT NULL THEN v_where := v_where || ' AND j.params @> $6'; END IF;
    IF p_result_contains IS NOT NULL THEN v_where := v_where || ' AND j.result @> $7'; END IF;

    IF v_cursor THEN
        v_sql := format(
            'SELECT j.*, NULL::bigint FROM public.job_queue j WHERE %s AND (j.created_at, j.id) %s ($8, $9)
             ORDER BY j.created_at %s, j.id %s LIMIT $4',
            v_where, CASE v_dir WHEN 'DESC' THEN '<' ELSE '>' END, v_dir, v_dir);
    ELSIF NOT coalesce(p_with_total, true) THEN
        v_sql := format(
            'SELECT j.*, NULL::bigint FROM public.job_queue j WHERE %s
             ORDER BY j.%I %s%s, j.id %s LIMIT $4 OFFSET $5',
            v_where, v_order, v_dir,
            CASE WHEN v_order = 'completed_at' THEN ' NULLS LAST' ELSE '' END, v_dir);
    ELSE
        -- The count and the page are separate scans so that the page can stop
        -- at LIMIT instead of materialising every row for a window count.
        v_sql := format(
            'WITH total AS (SELECT count(*) AS n FROM public.job_queue j WHERE %s)
             SELECT j.*, total.n FROM public.job_queue j, total WHERE %s
             ORDER BY j.%I %s%s, j.id %s LIMIT $4 OFFSET $5',
            v_where, v_where, v_order, v_dir,
            -- only completed_at is nullable; NULLS LAST elsewhere would stop index order matching
            CASE WHEN v_order = 'completed_at' THEN ' NULLS LAST' ELSE '' END, v_dir);
    END IF;
    RETURN QUERY EXECUTE v_sql
        USING v_user, p_status, p_job_type, p_limit, p_offset, p_params_contains, p_result_contains,
              p_cursor_created_at, p_cursor_id;
END
$$;

-- Paginated logs (newest first) with total_count. A user sees only logs of
-- their own jobs; p_job_id NULL searches all of the acting user's jobs, or
-- every job's logs for a service caller with p_user_id NULL.
CREATE FUNCTION public.get_job_logs(
    p_job_id uuid,
    p_user_id uuid DEFAULT NULL,
    p_limit integer DEFAULT 100,
    p_offset integer DEFAULT 0,
    p_level text DEFAULT NULL,
    p_search text DEFAULT NULL,
    p_metadata_contains jsonb DEFAULT NULL)
RETURNS TABLE (
    id bigint, job_id uuid, level text, message text, metadata jsonb,
    created_at timestamptz, total_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
    v_where text := 'true';
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    IF p_offset IS NULL OR p_offset NOT BETWEEN 0 AND 1000000 THEN
        RAISE EXCEPTION 'p_offset must be between 0 and 1000000' USING ERRCODE = '22023';
    END IF;
    IF p_level IS NOT NULL AND p_level NOT IN ('debug', 'info', 'warning', 'error') THEN
        RAISE EXCEPTION 'level must be debug, info, warning or error' USING ERRCODE = '22023';
    END IF;
    IF p_search IS NOT NULL AND length(p_search) > 500 THEN
        RAISE EXCEPTION 'search text over 500 characters' USING ERRCODE = '22023';
    END IF;
    IF p_job_id IS NULL THEN
        -- every job of the acting user (a service caller with p_user_id NULL: every job)
        IF v_user IS NOT NULL THEN
            v_where := v_where || ' AND l.job_id IN (SELECT j.id FROM public.job_queue j WHERE j.user_id = $7)';
        END IF;
    ELSE
        PERFORM 1 FROM public.job_queue j
         WHERE j.id = p_job_id AND (v_user IS NULL OR j.user_id = v_user);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % not found', p_job_id USING ERRCODE = 'P0002';
        END IF;
        v_where := v_where || ' AND l.job_id = $1';
    END IF;
    IF p_level IS NOT NULL THEN v_where := v_where || ' AND l.level = $2'; END IF;
    IF p_search IS NOT NULL AND p_search <> '' THEN
        v_where := v_where || ' AND to_tsvector(''simple''::regconfig, l.message) @@ websearch_to_tsquery(''simple''::regconfig, $3)';
    END IF;
    IF p_metadata_contains IS NOT NULL THEN v_where := v_where || ' AND l.metadata @> $4'; END IF;

    RETURN QUERY EXECUTE format(
        'WITH total AS (SELECT count(*) AS n FROM public.job_log l WHERE %s)
         SELECT l.id, l.job_id, l.level, l.message, l.metadata, l.created_at, total.n
           FROM public.job_log l, total WHERE %s
          ORDER BY l.created_at DESC, l.id DESC LIMIT $5 OFFSET $6', v_where, v_where)
        USING p_job_id, p_level, p_search, p_metadata_contains, p_limit, p_offset, v_user;
END
$$;

-- Dedup: returns the caller's job of the same type with equal params created
-- within p_dedupe_window that is pending, processing or completed, or creates
-- one (rate limited). Concurrent calls for one user are serialised, so a
-- double click yields one job.
CREATE FUNCTION public.find_or_create_job(
    p_user_id uuid,
    p_job_type text,
    p_params jsonb DEFAULT '{}'::jsonb,
    p_dedupe_window interval DEFAULT interval '5 minutes',
    p_priority integer DEFAULT 0,
    p_max_retries integer DEFAULT 3,
    p_run_after timestamptz DEFAULT NULL,
    p_ttl interval DEFAULT interval '24 hours')
RETURNS TABLE (job_id uuid, created boolean, status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id);
    v_job public.job_queue;
BEGIN
    IF p_dedupe_window IS NULL OR p_dedupe_window < interval '0' THEN
        RAISE EXCEPTION 'p_dedupe_window must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    v_job := public.jobq_new_job(v_user, p_job_type, p_params, p_priority, p_max_retries, p_run_after, p_ttl);
    PERFORM public.jobq_lock_user(v_user);
    RETURN QUERY
    SELECT j.id, false, j.status FROM public.job_queue j
     WHERE j.user_id = v_user AND j.job_type = p_job_type
       AND j.params @> p_params AND j.params = p_params
       AND j.status IN ('pending', 'processing', 'completed')
       AND j.created_at >= now() - p_dedupe_window
     ORDER BY j.created_at DESC
     LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    PERFORM public.jobq_check_rate_limit(v_user, 1);
    INSERT INTO public.job_queue SELECT (v_job).*;
    RETURN QUERY SELECT v_job.id, true, 'pending'::text;
END
$$;

-- Result cache: the newest completed result of the caller's job of this type
-- with equal params, completed within p_cache_ttl. No row = cache miss.
CREATE FUNCTION public.get_cached_job_result(
    p_user_id uuid,
    p_job_type text,
    p_params jsonb DEFAULT '{}'::jsonb,
    p_cache_ttl interval DEFAULT interval '1 hour')
RETURNS TABLE (job_id uuid, result jsonb, completed_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id);
BEGIN
    IF p_params IS NULL OR jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'params must be a JSON object' USING ERRCODE = '22023';
    END IF;
    IF p_cache_ttl IS NULL OR p_cache_ttl < interval '0' THEN
        RAISE EXCEPTION 'p_cache_ttl must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT j.id, j.result, j.completed_at FROM public.job_queue j
     WHERE j.user_id = v_user AND j.job_type = p_job_type
       AND j.params @> p_params AND j.params = p_params
       AND j.status = 'completed'
       AND j.completed_at >= now() - p_cache_ttl
     ORDER BY j.completed_at DESC
     LIMIT 1;
END
$$;

-- ---------------------------------------------------------------------------
-- SECTION 8: Maintenance functions (5) and worker functions
-- ---------------------------------------------------------------------------
-- Moves failed jobs whose backoff has elapsed back to pending.
CREATE FUNCTION public.retry_failed_jobs(p_limit integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
    -- run every few minutes: plan with the real values, never a generic plan
    SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'p_limit must be positive' USING ERRCODE = '22023';
    END IF;
    WITH due AS (
        SELECT id FROM public.job_queue
         WHERE status = 'failed' AND next_retry_at IS NOT NULL AND next_retry_at <= now()
         ORDER BY next_retry_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED)
    UPDATE public.job_queue j
       SET status = 'pending', worker_id = NULL, heartbeat_at = NULL, progress_percent = 0,
           progress_message = NULL, next_retry_at = NULL
      FROM due WHERE j.id = due.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Deletes finished jobs (and their logs) older than p_older_than, in batches
-- of p_batch_size rows so that a large backlog never holds long locks.
CREATE FUNCTION public.cleanup_old_jobs(
    p_older_than interval DEFAULT interval '7 days',
    p_batch_size integer DEFAULT 100000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
    -- run every few minutes: plan with the real values, never a generic plan
    SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    v_count integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'p_older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'p_batch_size must be positive' USING ERRCODE = '22023';
    END IF;
    WITH old AS (
        -- The rows are locked, so their ctid holds until the DELETE: one TID scan
        -- finds them all, where a batch of ids costs a primary key probe each.
        SELECT ctid FROM public.job_queue
         WHERE status IN ('completed', 'failed', 'cancelled', 'expired')
           AND completed_at < now() - p_older_than
           AND NOT (status = 'failed' AND next_retry_at IS NOT NULL)
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM public.job_queue j WHERE j.ctid = ANY (ARRAY(SELECT ctid FROM old)) RETURNING j.id
    ), logs AS (
        -- A sorted array: one index scan per log partition, where IN (SELECT ...)
        -- was a nested loop probing every partition once per deleted job.
        DELETE FROM public.job_log l WHERE l.job_id = ANY (ARRAY(SELECT id FROM gone ORDER BY id))
    )
    SELECT count(*) INTO v_count FROM gone;
    RETURN v_count;
END
$$;

-- Pending jobs never started by their expires_at (24 hours after they became
-- runnable, unless created with another ttl) become expired. A job waiting for
-- a retry has started and does not expire.
CREATE FUNCTION public.expire_stale_jobs()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
    -- run every few minutes: plan with the real values, never a generic plan
    SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    v_count integer;
BEGIN
    WITH stale AS (
        SELECT id FROM public.job_queue
         WHERE status = 'pending' AND expires_at IS NOT NULL AND started_at IS NULL
           AND expires_at <= now()
           FOR UPDATE SKIP LOCKED)
    UPDATE public.job_queue j
       SET status = 'expired', error_code = 'EXPIRED', error_message = 'not started before it expired'
      FROM stale WHERE j.id = stale.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Running jobs whose heartbeat is older than p_timeout fail with error_code
-- STUCK (their worker died or hung); the retry policy then applies as for any
-- failure, so a job whose worker was killed runs again on another worker.
CREATE FUNCTION public.detect_stuck_jobs(p_timeout interval DEFAULT interval '30 minutes')
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
    -- run every few minutes: plan with the real values, never a generic plan
    SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    v_cfg public.job_queue_config;
    v_count integer;
BEGIN
    IF p_timeout IS NULL OR p_timeout <= interval '0' THEN
        RAISE EXCEPTION 'p_timeout must be a positive interval' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_cfg FROM public.job_queue_config;
    WITH stuck AS (
        SELECT id FROM public.job_queue
         WHERE status = 'processing' AND heartbeat_at < now() - p_timeout
           FOR UPDATE SKIP LOCKED)
    UPDATE public.job_queue j
       SET status = 'failed', error_code = 'STUCK',
           error_message = format('no heartbeat from worker %s for %s', j.worker_id, p_timeout),
           next_retry_at = CASE WHEN j.attempts <= j.max_retries
               THEN now() + least(v_cfg.retry_base_delay * power(2, j.attempts - 1), v_cfg.retry_max_delay) END
      FROM stuck WHERE j.id = stuck.id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Counts and durations per job type and status. p_user_id NULL = every user
-- (service callers only). p_since limits to jobs created since then.
CREATE FUNCTION public.get_job_queue_stats(p_user_id uuid DEFAULT NULL, p_since timestamptz DEFAULT NULL)
RETURNS TABLE (
    job_type text, status text, job_count bigint,
    avg_duration_ms double precision, p50_duration_ms double precision, p95_duration_ms double precision,
    oldest_created_at timestamptz, newest_created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
BEGIN
    RETURN QUERY
    SELECT j.job_type, j.status, count(*),
           avg(extract(epoch FROM j.completed_at - j.started_at) * 1000)::double precision,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.completed_at - j.started_at) * 1000)::double precision,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.completed_at - j.started_at) * 1000)::double precision,
           min(j.created_at), max(j.created_at)
      FROM public.job_queue j
     WHERE (v_user IS NULL OR j.user_id = v_user)
       AND (p_since IS NULL OR j.created_at >= p_since)
     GROUP BY j.job_type, j.status
     ORDER BY j.job_type, j.status;
END
$$;

-- Unfinished work by type (pending, processing, failed) across all users: the
-- dashboard's queue depth. Reads idx_job_queue_type_status only.
CREATE FUNCTION public.get_queue_depth()
RETURNS TABLE (job_type text, status text, job_count bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ''
AS $$
    SELECT j.job_type, j.status, count(*)
      FROM public.job_queue j
     WHERE j.status IN ('pending', 'processing', 'failed')
     GROUP BY j.job_type, j.status
     ORDER BY j.job_type, j.status
$$;

-- Jobs that finished since now() - p_since (at most a day), for the
-- dashboard's throughput and latency charts: finished jobs per status and the
-- p50/p95 run time (started_at -> completed_at) of the completed ones, in three
-- groupings told apart by which key is NULL:
--   bucket set, job_type NULL   one row per UTC minute that saw a finish
--   bucket NULL, job_type set   one row per job type over the whole window
--   both NULL                   the whole window (always present, zeros if idle)
-- p_user_id NULL = every user (service callers only). Reads
-- idx_job_queue_cleanup (finished jobs by completed_at): a bounded range scan,
-- however many jobs the table holds. A failed job retried since is pending
-- again and no longer counted.
CREATE FUNCTION public.get_job_throughput(
    p_user_id uuid DEFAULT NULL,
    p_since interval DEFAULT interval '1 hour')
RETURNS TABLE (
    bucket timestamptz, job_type text,
    completed bigint, failed bigint, cancelled bigint, expired bigint,
    p50_duration_ms double precision, p95_duration_ms double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ''
    -- polled by dashboards: plan with the real window, never a generic plan
    SET plan_cache_mode = 'force_custom_plan'
AS $$
DECLARE
    v_user uuid := public.jobq_acting_user(p_user_id, true);
BEGIN
    IF p_since IS NULL OR p_since <= interval '0' OR p_since > interval '1 day' THEN
        RAISE EXCEPTION 'p_since must be a positive interval of at most 1 day' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    SELECT date_trunc('minute', j.completed_at, 'UTC'), j.job_type,
           count(*) FILTER (WHERE j.status = 'completed'),
           count(*) FILTER (WHERE j.status = 'failed'),
           count(*) FILTER (WHERE j.status = 'cancelled'),
           count(*) FILTER (WHERE j.status = 'expired'),
           (percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM j.completed_at - j.started_at) * 1000)
               FILTER (WHERE j.status = 'completed'))::double precision,
           (percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM j.completed_at - j.started_at) * 1000)
               FILTER (WHERE j.status = 'completed'))::double precision
      FROM public.job_queue j
     WHERE j.status IN ('completed', 'failed', 'cancelled', 'expired')
       AND j.completed_at >= now() - p_since
       AND (v_user IS NULL OR j.user_id = v_user)
     GROUP BY GROUPING SETS ((date_trunc('minute', j.completed_at, 'UTC')), (j.job_type), ())
     ORDER BY 1 NULLS LAST, 2 NULLS LAST;
END
$$;

-- Claims up to p_limit runnable jobs for a worker: pending, due (run_after and
-- next_retry_at), not expired; highest priority first, then FIFO. SKIP LOCKED
-- lets any number of workers claim concurrently without waiting or sharing.
CREATE FUNCTION public.claim_jobs(p_worker_id text, p_limit integer DEFAULT 1, p_job_types text[] DEFAULT NULL)
RETURNS SETOF public.job_queue
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF p_worker_id IS NULL OR p_worker_id = '' OR length(p_worker_id) > 200 THEN
        RAISE EXCEPTION 'p_worker_id must be 1-200 characters' USING ERRCODE = '22023';
    END IF;
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'p_limit must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT q.id FROM public.job_queue q
         WHERE q.status = 'pending'
           AND q.run_after <= now()
           AND (q.next_retry_at IS NULL OR q.next_retry_at <= now())
           AND (q.expires_at IS NULL OR q.expires_at > now() OR q.started_at IS NOT NULL)
           AND (p_job_types IS NULL OR q.job_type = ANY (p_job_types))
         ORDER BY q.priority DESC, q.created_at, q.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE public.job_queue j
           SET status = 'processing', worker_id = p_worker_id, attempts = j.attempts + 1,
               started_at = now(), heartbeat_at = now(), next_retry_at = NULL,
               progress_percent = 0, progress_message = NULL
          FROM picked WHERE j.id = picked.id
        RETURNING j.*)
    -- RETURNING has no order of its own: hand the batch over in claim order
    SELECT c.* FROM claimed c ORDER BY c.priority DESC, c.created_at, c.id;
END
$$;

-- Records that the worker is alive for the jobs it runs. Returns the jobs of
-- p_job_ids it no longer holds (cancelled, rescued by stuck detection, ...),
-- with their status, so the worker can stop their handlers.
CREATE FUNCTION public.heartbeat_jobs(p_worker_id text, p_job_ids uuid[])
RETURNS TABLE (job_id uuid, status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
BEGIN
    IF p_worker_id IS NULL OR p_worker_id = '' THEN
        RAISE EXCEPTION 'p_worker_id is required' USING ERRCODE = '22023';
    END IF;
    UPDATE public.job_queue q SET heartbeat_at = now()
     WHERE q.worker_id = p_worker_id AND q.status = 'processing' AND q.id = ANY (p_job_ids);
    RETURN QUERY
    SELECT ids.id, coalesce(q.status, 'missing')
      FROM unnest(p_job_ids) AS ids(id)
      LEFT JOIN public.job_queue q ON q.id = ids.id
     WHERE q.id IS NULL OR q.status <> 'processing' OR q.worker_id IS DISTINCT FROM p_worker_id;
END
$$;

-- Hands a worker's running jobs back to the queue (graceful shutdown). The
-- interrupted attempt is not counted: processing -> failed -> pending.
CREATE FUNCTION public.release_jobs(p_worker_id text, p_job_ids uuid[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_ids uuid[];
BEGIN
    IF p_worker_id IS NULL OR p_worker_id = '' THEN
        RAISE EXCEPTION 'p_worker_id is required' USING ERRCODE = '22023';
    END IF;
    WITH held AS (
        UPDATE public.job_queue q
           SET status = 'failed', error_code = 'RELEASED',
               error_message = format('released by worker %s on shutdown', p_worker_id),
               attempts = greatest(q.attempts - 1, 0), next_retry_at = now()
         WHERE q.worker_id = p_worker_id AND q.status = 'processing'
           AND (p_job_ids IS NULL OR q.id = ANY (p_job_ids))
        RETURNING q.id)
    SELECT coalesce(array_agg(id), '{}') INTO v_ids FROM held;
    UPDATE public.job_queue q
       SET status = 'pending', worker_id = NULL, heartbeat_at = NULL, progress_percent = 0,
           progress_message = NULL, completed_at = NULL
     WHERE q.id = ANY (v_ids);
    RETURN cardinality(v_ids);
END
$$;

-- Manual retry of a failed job (dashboard "retry"), now, whatever its backoff.
-- The owner may retry their own job; one more attempt is granted when the
-- job had used them all.
CREATE FUNCTION public.retry_job(p_job_id uuid)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = ''
AS $$
DECLARE
    v_job public.job_queue := public.jobq_lock_job(p_job_id);
BEGIN
    IF v_job.status <> 'failed' THEN
        RAISE EXCEPTION 'job % is %: only failed jobs can be retried', p_job_id, v_job.status USING ERRCODE = '55000';
    END IF;
    IF NOT public.jobq_caller_is_service() THEN
        PERFORM public.jobq_check_rate_limit(v_job.user_id, 1);
    END IF;
    UPDATE public.job_queue
       SET status = 'pending', next_retry_at = NULL, worker_id = NULL, heartbeat_at = NULL,
           progress_percent = 0, progress_message = NULL, completed_at = NULL,
           max_retries = greatest(max_retries, attempts)
     WHERE id = p_job_id;
    RETURN 'pending';
END
$$;

-- Creates the monthly job_log partitions from this month to p_months_ahead
-- months ahead. Idempotent. Rows that fell into the default partition for a
-- month (maintenance did not run in time) are moved into the new partition.
-- Returns the names created.
CREATE FUNCTION public.create_job_log_partitions(p_months_ahead integer DEFAULT 3)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' SET TimeZone = 'UTC'
AS $$
DECLARE
    v_month timestamptz;
    v_from text;
    v_to text;
    v_name text;
    v_strays boolean;
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead NOT BETWEEN 0 AND 36 THEN
        RAISE EXCEPTION 'p_months_ahead must be between 0 and 36' USING ERRCODE = '22023';
    END IF;
    -- one creator at a time: a concurrent call waits, then finds nothing to do
    PERFORM pg_advisory_xact_lock(1785292082);
    FOR v_month IN
        SELECT generate_series(date_trunc('month', now()),
                               date_trunc('month', now()) + make_interval(months => p_months_ahead),
                               interval '1 month')
    LOOP
        v_name := 'job_log_' || to_char(v_month, 'YYYY_MM');
        CONTINUE WHEN to_regclass('public.' || v_name) IS NOT NULL;
        v_from := v_month::text;
        v_to := (v_month + interval '1 month')::text;
        SELECT EXISTS (SELECT 1 FROM public.job_log_default
                        WHERE created_at >= v_from::timestamptz AND created_at < v_to::timestamptz)
          INTO v_strays;
        IF v_strays THEN
            EXECUTE format('CREATE TEMP TABLE jobq_strays ON COMMIT DROP AS
                            WITH moved AS (DELETE FROM public.job_log_default
                                            WHERE created_at >= %L AND created_at < %L RETURNING *)
                            SELECT * FROM moved', v_from, v_to);
        END IF;
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.job_log FOR VALUES FROM (%L) TO (%L)
                        WITH (toast_tuple_target = 8160)', v_name, v_from, v_to);
        -- A partition queried by name skips the parent's RLS: close it like the parent.
        EXECUTE format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated, service_role', v_name);
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', v_name);
        IF v_strays THEN
            INSERT INTO public.job_log OVERRIDING SYSTEM VALUE SELECT * FROM pg_temp.jobq_strays;
            DROP TABLE pg_temp.jobq_strays;
        END IF;
        RETURN NEXT v_name;
    END LOOP;
END
$$;

-- Drops monthly job_log partitions whose whole range is older than p_older_than
-- (and default-partition rows older than that). Returns the names dropped.
CREATE FUNCTION public.drop_old_job_log_partitions(p_older_than interval DEFAULT interval '30 days')
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' SET TimeZone = 'UTC'
AS $$
DECLARE
    v_part record;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'p_older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    FOR v_part IN
        SELECT c.relname
          FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.job_log'::regclass
           AND c.relname ~ '^job_log_[0-9]{4}_[0-9]{2}$'
           AND (to_date(substr(c.relname, 9), 'YYYY_MM') + interval '1 month') < now() - p_older_than
    LOOP
        EXECUTE format('DROP TABLE public.%I', v_part.relname);
        RETURN NEXT v_part.relname;
    END LOOP;
    -- strays that landed in the default partition age out the same way
    DELETE FROM public.job_log_default WHERE created_at < now() - p_older_than;
END
$$;

DO $$ BEGIN PERFORM public.create_job_log_partitions(3); END $$;

-- What a migration must have created, by name: `jobq verify` and the closing
-- notice read it. Counts are against the spec's lists.
CREATE FUNCTION public.jobq_schema_report()
RETURNS TABLE (kind text, expected integer, found integer, missing text[])
LANGUAGE sql STABLE SET search_path = ''
AS $$
    WITH expected(kind, name) AS (
        SELECT 'job_queue indexes', unnest(ARRAY[
            'idx_job_queue_user_status_created', 'idx_job_queue_pending_pickup', 'idx_job_queue_worker_active',
            'idx_job_queue_cleanup', 'idx_job_queue_retry_eligible', 'idx_job_queue_type_status',
            'idx_job_queue_user_active', 'idx_job_queue_expiration', 'idx_job_queue_stuck_detection',
            'idx_job_queue_params_gin', 'idx_job_queue_result_gin'])
        UNION ALL
        SELECT 'job_queue indexes (jobq)', unnest(ARRAY['idx_job_queue_user_created', 'idx_job_queue_created'])
        UNION ALL
        SELECT 'job_log indexes', unnest(ARRAY[
            'idx_job_log_job_time', 'idx_job_log_errors', 'idx_job_log_message_fts', 'idx_job_log_metadata_gin'])
        UNION ALL
        SELECT 'functions (spec)', unnest(ARRAY[
            'create_job', 'update_job_progress', 'start_job', 'complete_job', 'fail_job', 'cancel_job',
            'add_job_log', 'get_user_jobs', 'get_job_logs', 'find_or_create_job', 'get_cached_job_result',
            'retry_failed_jobs', 'cleanup_old_jobs', 'expire_stale_jobs', 'detect_stuck_jobs', 'get_job_queue_stats'])
        UNION ALL
        SELECT 'functions (jobq)', unnest(ARRAY[
            'create_jobs', 'claim_jobs', 'complete_jobs', 'heartbeat_jobs', 'release_jobs', 'retry_job',
            'get_queue_depth', 'get_job_throughput',
            'create_job_log_partitions', 'drop_old_job_log_partitions'])
        UNION ALL
        SELECT 'triggers', unnest(ARRAY['job_queue_updated_at', 'job_status_change_notify'])
        UNION ALL
        SELECT 'policies', unnest(ARRAY[
            'job_queue_select_own', 'job_queue_insert_own', 'job_queue_update_own', 'job_queue_service_all',
            'job_log_select_own', 'job_log_insert_service'])
    ), present(kind, name) AS (
        SELECT k.kind, i.relname::text
          FROM pg_catalog.pg_index x
          JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
          JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
         CROSS JOIN LATERAL unnest(CASE t.relname WHEN 'job_queue'
                    THEN ARRAY['job_queue indexes', 'job_queue indexes (jobq)']
                    ELSE ARRAY['job_log indexes'] END) AS k(kind)
         WHERE n.nspname = 'public' AND t.relname IN ('job_queue', 'job_log')
        UNION ALL
        SELECT k, p.proname::text
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,
               (VALUES ('functions (spec)'), ('functions (jobq)')) AS kinds(k)
         WHERE n.nspname = 'public'
        UNION ALL
        SELECT 'triggers', tg.tgname::text
          FROM pg_catalog.pg_trigger tg
         WHERE tg.tgrelid = 'public.job_queue'::regclass AND NOT tg.tgisinternal
        UNION ALL
        SELECT 'policies', pol.policyname::text
          FROM pg_catalog.pg_policies pol
         WHERE pol.schemaname = 'public' AND pol.tablename IN ('job_queue', 'job_log')
    )
    SELECT e.kind, count(*)::integer,
           count(p.name)::integer,
           coalesce(array_agg(e.name ORDER BY e.name) FILTER (WHERE p.name IS NULL), '{}')
      FROM expected e
      LEFT JOIN (SELECT DISTINCT kind, name FROM present) p ON p.kind = e.kind AND p.name = e.name
     GROUP BY e.kind
     ORDER BY min(CASE e.kind WHEN 'job_queue indexes' THEN 1 WHEN 'job_queue indexes (jobq)' THEN 1.5
                  WHEN 'job_log indexes' THEN 2
                  WHEN 'functions (spec)' THEN 3 WHEN 'functions (jobq)' THEN 4 WHEN 'triggers' THEN 5 ELSE 6 END)
$$;

-- ---------------------------------------------------------------------------
-- SECTION 9: Row level security (6 policies) and privileges
-- ---------------------------------------------------------------------------
ALTER TABLE public.job_queue ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_queue_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.job_queue_user_lock ENABLE ROW LEVEL SECURITY;

CREATE POLICY job_queue_select_own ON public.job_queue
    FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));
-- Present for completeness: authenticated has no INSERT privilege on the
-- table, so new jobs go through create_job and its rate limit.
CREATE POLICY job_queue_insert_own ON public.job_queue
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.uid()));
-- A user may cancel their own job directly (UPDATE ... SET status =
-- 'cancelled'); the state machine trigger decides whether it is legal.
CREATE POLICY job_queue_update_own ON public.job_queue
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid()))
    WITH CHECK (user_id = (SELECT auth.uid()) AND status = 'cancelled');
CREATE POLICY job_queue_service_all ON public.job_queue
    FOR ALL TO service_role
    USING (true) WITH CHECK (true);
CREATE POLICY job_log_select_own ON public.job_log
    FOR SELECT TO authenticated
    USING (EXISTS (SELECT 1 FROM public.job_queue j WHERE j.id = job_log.job_id AND j.user_id = (SELECT auth.uid())));
CREATE POLICY job_log_insert_service ON public.job_log
    FOR INSERT TO service_role
    WITH CHECK (true);

-- Supabase's default privileges grant new tables and functions to the API
-- roles; take everything back, then grant exactly what each role needs.
REVOKE ALL ON public.job_queue, public.job_log, public.job_log_default, public.job_queue_config,
              public.job_queue_user_lock
    FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON SEQUENCE public.job_log_id_seq FROM PUBLIC, anon, authenticated, service_role;
-- The runner's history table (created by `jobq migrate` / `jobq sql` before
-- this file runs) is nobody's business but the owner's.
DO $history$
BEGIN
    IF to_regclass('public.jobq_migrations') IS NOT NULL THEN
        REVOKE ALL ON public.jobq_migrations FROM PUBLIC, anon, authenticated, service_role;
        ALTER TABLE public.jobq_migrations ENABLE ROW LEVEL SECURITY;
    END IF;
END
$history$;
ALTER TABLE public.job_log_default ENABLE ROW LEVEL SECURITY;
GRANT SELECT, UPDATE (status) ON public.job_queue TO authenticated;
GRANT SELECT ON public.job_log TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.job_queue, public.job_log TO service_role;
GRANT USAGE, SELECT ON SEQUENCE public.job_log_id_seq TO service_role;
-- No policy on the config table: only the owner and BYPASSRLS service_role see it.
GRANT SELECT, UPDATE ON public.job_queue_config TO service_role;

DO $grants$
DECLARE
    v_user_fns text[] := ARRAY[
        'create_job', 'create_jobs', 'find_or_create_job', 'get_cached_job_result', 'cancel_job',
        'retry_job', 'get_user_jobs', 'get_job_logs', 'get_job_queue_stats', 'get_job_throughput'];
    v_service_fns text[] := ARRAY[
        'update_job_progress', 'start_job', 'complete_job', 'fail_job', 'add_job_log',
        'retry_failed_jobs', 'cleanup_old_jobs', 'expire_stale_jobs', 'detect_stuck_jobs',
        'claim_jobs', 'complete_jobs', 'heartbeat_jobs', 'release_jobs', 'create_job_log_partitions',
        'get_queue_depth',
        'drop_old_job_log_partitions'];
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname::text AS name
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public'
           AND (p.proname = ANY (v_user_fns || v_service_fns) OR p.proname LIKE 'jobq\_%'
                OR p.proname IN ('job_queue_before_update', 'notify_job_status_change'))
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated, service_role', f.sig);
        IF f.name = ANY (v_user_fns) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO authenticated, service_role', f.sig);
        ELSIF f.name = ANY (v_service_fns) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO service_role', f.sig);
        END IF;
    END LOOP;
END
$grants$;
