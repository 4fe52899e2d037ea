-- Usage: what a job spent, as its handler reported it (a result with
-- {"usage": {"tokens": N, "cost": C}}). Providers fill it; the autonomy tax
-- and the governor read it.
ALTER TABLE jobs ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cost   REAL    NOT NULL DEFAULT 0;

-- The tax reads the jobs created in a window.
CREATE INDEX jobs_by_created ON jobs (created_at);

-- The governor reads the outcomes of recent attempts; only those two event
-- types are indexed, so the other events cost the hot path nothing extra.
CREATE INDEX events_outcomes ON events (at) WHERE type IN ('finished', 'failed');
