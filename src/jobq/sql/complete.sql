-- Closing notice of a migration run (spec step 4): what was created, by name.
DO $complete$
DECLARE
    r record;
    v_ok boolean := true;
BEGIN
    RAISE NOTICE 'ASYNC ARCHITECTURE MIGRATION COMPLETE!';
    FOR r IN SELECT * FROM public.jobq_schema_report() LOOP
        RAISE NOTICE '  %: %/%', r.kind, r.found, r.expected;
        IF cardinality(r.missing) > 0 THEN
            v_ok := false;
            RAISE WARNING '  missing %: %', r.kind, array_to_string(r.missing, ', ');
        END IF;
    END LOOP;
    IF NOT v_ok THEN
        RAISE EXCEPTION 'jobq schema incomplete' USING ERRCODE = '55000';
    END IF;
END
$complete$;
