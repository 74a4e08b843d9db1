-- The callbacks of finished jobs (core.callbacks): one row per job, run and kind once its RelayJob
-- was created, found created already, or refused by the API server for good. A finished job that
-- asks for a callback and has no row here is still owed it: the process that recorded the outcome
-- stopped before creating it, and maintenance creates it.
CREATE TABLE callbacks (
    job_uid     uuid        NOT NULL REFERENCES jobs (uid) ON DELETE CASCADE,
    run         integer     NOT NULL,
    kind        text        NOT NULL,
    name        text        NOT NULL,
    -- Why the API server refused it for good (e.g. 422 Invalid); NULL when the RelayJob exists.
    refusal     text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_uid, run, kind)
);

-- The finished jobs maintenance looks through for callbacks owed: those whose spec asks for one,
-- however many finished jobs ask for none.
CREATE INDEX jobs_callbacks ON jobs (finished_at)
    WHERE deleted_at IS NULL AND finished_at IS NOT NULL
        AND (spec -> 'onCompletion' IS NOT NULL OR spec -> 'onFailure' IS NOT NULL);
