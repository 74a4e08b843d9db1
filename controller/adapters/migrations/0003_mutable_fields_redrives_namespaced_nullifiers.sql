-- Targets must receive numbers as the RelayJob holds them. jsonb stores numbers as numeric and
-- prints them back in its own form (1e300 becomes a 301-digit integer); json keeps the text.
ALTER TABLE jobs ALTER COLUMN spec TYPE json USING spec::json;

-- The fields a user may change after creation (batch/v1 Job's model) live in columns of their own;
-- `spec` keeps the spec as admitted, whose other fields never change. `generation` is the
-- generation the operator last acted on: status.observedGeneration.
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
-- A rejected spec may hold anything at `priority`: only a small integer is taken from it.
UPDATE jobs SET priority = (spec->>'priority')::integer
    WHERE (spec->>'priority') ~ '^-?[0-9]{1,3}$';
-- Desired state, apart from the phase: a job suspended while an attempt runs stays Processing
-- until that attempt is recorded, and then becomes Suspended instead of Retrying.
ALTER TABLE jobs ADD COLUMN suspend boolean NOT NULL DEFAULT false;
UPDATE jobs SET suspend = true WHERE phase = 'Suspended';

-- Every relay.dev/redrive value the operator has seen on a job, acted on or not: each value is
-- acted on at most once, whatever restarts come between. `redrive_token` on jobs is the last seen.
CREATE TABLE redrives (
    job_uid  uuid        NOT NULL REFERENCES jobs (uid) ON DELETE CASCADE,
    value    text        NOT NULL,
    acted    boolean     NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_uid, value)
);
INSERT INTO redrives (job_uid, value, acted)
    SELECT uid, redrive_token, true FROM jobs WHERE redrive_token IS NOT NULL;

-- Nullifiers belong to a namespace: two tenants may use the same string independently. The
-- index it replaces was stricter, so existing rows satisfy this one.
DROP INDEX jobs_nullifier_held;
CREATE UNIQUE INDEX jobs_nullifier_held ON jobs (namespace, nullifier) WHERE nullifier_state IS NOT NULL;
