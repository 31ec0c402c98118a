-- jobq 0003: the two SQL-language helpers on the enqueue path become PL/pgSQL.
--
-- A LANGUAGE sql function that cannot be inlined (these set search_path) is
-- parsed and planned again in every transaction that calls it from PL/pgSQL on
-- PostgreSQL before 18, which caches no plan for it. jobq_caller_is_service()
-- runs twice in every create_job (the acting user, the rate limit) and in most
-- other functions; on PostgreSQL 15 it cost about 40 us per transaction, a
-- fifth of a plain INSERT's whole commit (bench/NOTES.md, "create_job through
-- the Client"). PL/pgSQL keeps its plans for the session. Same bodies, same
-- results, same privileges (CREATE OR REPLACE keeps them).

-- Is the caller trusted with every user's jobs? True for service_role and for
-- a session that has not switched role and logged in as a superuser or a
-- BYPASSRLS role (the migration owner, psql, a worker on DATABASE_URL).
-- current_setting('role') survives SECURITY DEFINER and cannot be set to a
-- role the session is not a member of, so it is safe to trust.
CREATE OR REPLACE FUNCTION public.jobq_caller_is_service() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = ''
AS $$
BEGIN
    RETURN CASE pg_catalog.current_setting('role')
        WHEN 'service_role' THEN true
        WHEN 'none' THEN coalesce(
            (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname = session_user),
            false)
        ELSE false
    END;
END
$$;

-- Serialises job creation for one user until the end of the transaction.
CREATE OR REPLACE FUNCTION public.jobq_lock_user(p_user_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = ''
AS $$
BEGIN
    INSERT INTO public.job_queue_user_lock AS l (user_id) VALUES (p_user_id)
    ON CONFLICT (user_id) DO UPDATE SET locked_at = now();
END
$$;
