-- Jobs keyed by the RelayJob's uid, their attempts, and the nullifier reservations.
CREATE TABLE jobs (
    uid              uuid PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    namespace        text        NOT NULL,
    name             text        NOT NULL,
    generation       bigint      NOT NULL DEFAULT 1,
    spec             jsonb       NOT NULL,
    phase            text        NOT NULL,
    nullifier        text,
    -- 'reserved' while the job may still run, 'spent' once it completed, NULL when it holds none.
    nullifier_state  text CHECK (nullifier_state IN ('reserved', 'spent')),
    run              integer     NOT NULL DEFAULT 1,
    attempts         integer     NOT NULL DEFAULT 0,
    retries          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    next_attempt_at  timestamptz,
    last_error       text,
    result           jsonb,
    reason           text,
    message          text,
    redrive_token    text,
    ttl_seconds      integer,
    version          bigint      NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    queued_at        timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    deleted_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((nullifier_state IS NULL) OR (nullifier IS NOT NULL))
);

-- The double-spend guard: at most one job reserves or has spent a nullifier. Races between
-- replicas are decided here, never by an in-memory check.
CREATE UNIQUE INDEX jobs_nullifier_held ON jobs (nullifier) WHERE nullifier_state IS NOT NULL;
CREATE INDEX jobs_active ON jobs (phase) WHERE deleted_at IS NULL
    AND phase IN ('Queued', 'Retrying', 'Processing');
-- Finished jobs still waiting for ttlSecondsAfterFinished: a small set, scanned every second.
CREATE INDEX jobs_ttl_due ON jobs (finished_at)
    WHERE ttl_seconds IS NOT NULL AND deleted_at IS NULL AND finished_at IS NOT NULL;

CREATE TABLE attempts (
    job_uid      uuid        NOT NULL REFERENCES jobs (uid),
    run          integer     NOT NULL,
    attempt      integer     NOT NULL,
    worker       text        NOT NULL,
    outcome      text        NOT NULL DEFAULT 'running'
        CHECK (outcome IN ('running', 'succeeded', 'retryable', 'permanent', 'lost', 'cancelled')),
    reason       text,
    message      text,
    result       jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (job_uid, run, attempt)
);
