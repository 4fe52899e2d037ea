-- Every statement the SQLite store runs, by name (loaded by queries.py).
--
-- Placeholders filled when the file loads: {job_columns}, {job_columns_elided},
-- {event_columns}, {lane_event_columns}, {terminal} and {live} (the state sets
-- of domain.py), and for each move_NAME statement {sources} and {target}, taken
-- from domain.MOVES, so the states a move may start from are written down once.
-- Placeholders filled per call: {marks} (a list of ?), {guard} (what an
-- attempt's move must also match), {where} (a listing's filter), {returning}
-- (the whole job, or only what the hot path needs back).

-- name: max_job_id
SELECT IFNULL(MAX(id), 0) FROM jobs

-- name: max_event_id
SELECT IFNULL(MAX(id), 0) FROM events

-- name: insert_events
INSERT INTO events (id, job_id, at, type, from_state, to_state, trigger, note, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: queued_depth
SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND lane = ?

-- ---------------------------------------------------------------------------
-- Submit

-- name: live_key_holder
SELECT {job_columns}, request_hash FROM jobs WHERE key = ? AND state NOT IN ({terminal})

-- name: recent_key_holder
-- The kind keeps keys past the end of a job: the newest job with the key that
-- ended inside the window answers.
SELECT {job_columns}, request_hash FROM jobs WHERE key = ? AND finished_at >= ?
ORDER BY id DESC LIMIT 1

-- name: root_of
SELECT root_id FROM jobs WHERE id = ?

-- name: insert_job
INSERT INTO jobs (id, kind, lane, priority, order_key, project, role, payload, state, key,
                  trigger, reason, parent_id, root_id, max_attempts, not_before, created_at,
                  updated_at, request_hash)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING {job_columns}

-- ---------------------------------------------------------------------------
-- Moves: one statement per domain.Move, each a compare-and-set on the state.

-- name: lane_is_paused
SELECT paused FROM lanes WHERE name = ?

-- name: claim_pick
-- Walk the lane in claim order and skip what is not yet due; left to itself the
-- planner picks the not_before index and sorts the whole lane on every claim.
SELECT id FROM jobs INDEXED BY jobs_claim_order
WHERE state = 'queued' AND lane = ? AND not_before <= ?
ORDER BY order_key LIMIT ?

-- name: move_claim
UPDATE jobs SET state = {target}, attempts = attempts + 1, lease_holder = ?,
       lease_expires_at = ?, heartbeat_at = ?, started_at = ?, updated_at = ?, progress = NULL
WHERE id IN ({marks}) AND state IN ({sources})
RETURNING {job_columns}

-- name: move_finish
UPDATE jobs SET state = {target}, result = :result, error = NULL, finished_at = :now,
       updated_at = :now, lease_holder = NULL, lease_expires_at = NULL,
       tokens = tokens + :tokens, cost = cost + :cost
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_fail
UPDATE jobs SET state = {target}, error = :error, updated_at = :now, lease_holder = NULL,
       lease_expires_at = NULL, tokens = tokens + :tokens, cost = cost + :cost
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_schedule_retry
UPDATE jobs SET state = {target}, not_before = :not_before, updated_at = :now
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_bury
UPDATE jobs SET state = {target}, finished_at = :now, updated_at = :now
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_defer
UPDATE jobs SET state = {target}, attempts = MAX(attempts - 1, 0), deferrals = deferrals + 1,
       not_before = :not_before, updated_at = :now, lease_holder = NULL,
       lease_expires_at = NULL, tokens = tokens + :tokens, cost = cost + :cost
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_requeue
-- The attempt is given back: the job did not end it, its daemon did.
UPDATE jobs SET state = {target}, attempts = MAX(attempts - 1, 0), crashes = crashes + :crash,
       not_before = :now, updated_at = :now, lease_holder = NULL, lease_expires_at = NULL
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_cancel
UPDATE jobs SET state = {target}, finished_at = :now, updated_at = :now, lease_holder = NULL,
       lease_expires_at = NULL
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_retry
UPDATE jobs SET state = {target}, attempts = 0, crashes = 0, deferrals = 0, finished_at = NULL,
       not_before = MAX(not_before, :now), updated_at = :now, lease_holder = NULL,
       lease_expires_at = NULL
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: move_reopen
UPDATE jobs SET state = {target}, attempts = 0, crashes = 0, deferrals = 0, finished_at = NULL,
       not_before = MAX(not_before, :now), updated_at = :now
WHERE id = :id AND state IN ({sources}){guard}
RETURNING {returning}

-- name: guard_attempt
 AND lease_holder = :holder AND attempts = :attempt

-- name: guard_lease_expired
 AND lease_expires_at < :lease_expired_before

-- name: guard_holder
 AND lease_holder = :holder

-- name: job_facts
-- Why a compare-and-set found nothing to change.
SELECT state, lane, lease_holder, attempts FROM jobs WHERE id = ?

-- name: key_holder_of
SELECT j.key, h.id FROM jobs j JOIN jobs h ON h.key = j.key
WHERE j.id = ? AND h.id != j.id AND h.state NOT IN ({terminal})

-- name: running_jobs
SELECT {job_columns} FROM jobs WHERE state = 'running' ORDER BY id

-- name: renew_leases
UPDATE jobs SET heartbeat_at = ?, lease_expires_at = ?
WHERE id IN ({marks}) AND state = 'running' AND lease_holder = ?
RETURNING id, attempts

-- name: set_progress
UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running' AND lease_holder = ?

-- ---------------------------------------------------------------------------
-- Events that change no state

-- name: note_facts
SELECT state, EXISTS (SELECT 1 FROM events WHERE job_id = ? AND type = ?) FROM jobs WHERE id = ?

-- ---------------------------------------------------------------------------
-- Lanes

-- name: set_lane_paused
INSERT INTO lanes (name, paused, changed_at, paused_reason, changed_by) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, changed_at = excluded.changed_at,
       paused_reason = excluded.paused_reason, changed_by = excluded.changed_by

-- name: insert_lane_event
INSERT INTO lane_events (lane, at, paused, actor, reason) VALUES (?, ?, ?, ?, ?)
RETURNING {lane_event_columns}

-- name: lane_flags
SELECT name, paused, paused_reason, changed_by, changed_at FROM lanes

-- name: lane_counts
SELECT lane, state, COUNT(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY lane, state

-- name: lane_oldest_queued
SELECT MIN(created_at) FROM jobs WHERE state = 'queued' AND lane = ?

-- name: lane_next_due
SELECT MIN(not_before) FROM jobs WHERE state = 'queued' AND lane = ? AND not_before > ?

-- name: lane_events_of
SELECT {lane_event_columns} FROM lane_events WHERE lane = ? ORDER BY id DESC LIMIT ?

-- name: lanes_resumed_at
SELECT name, changed_at FROM lanes WHERE paused = 0 AND changed_at IS NOT NULL

-- ---------------------------------------------------------------------------
-- Reads

-- name: job_by_id
SELECT {job_columns} FROM jobs WHERE id = ?

-- name: list_jobs
SELECT {columns} FROM jobs{where} ORDER BY id DESC LIMIT ?

-- name: events_of_job
SELECT {event_columns} FROM events WHERE job_id = ? ORDER BY id

-- name: event_pairs
-- Every distinct change of state ever recorded (the transition-table check).
SELECT DISTINCT from_state, to_state FROM events
WHERE from_state IS NOT NULL AND to_state IS NOT NULL AND from_state != to_state

-- name: lineage
WITH RECURSIVE chain(id, depth) AS (
    SELECT id, 0 FROM jobs WHERE id = ?
    UNION ALL SELECT jobs.parent_id, chain.depth + 1 FROM jobs
    JOIN chain ON jobs.id = chain.id WHERE jobs.parent_id IS NOT NULL)
SELECT {job_columns_of_jobs} FROM chain JOIN jobs ON jobs.id = chain.id ORDER BY chain.depth DESC

-- name: count_by_state
SELECT state, COUNT(*) FROM jobs GROUP BY state

-- name: expired_leases
SELECT {job_columns} FROM jobs WHERE state = 'running' AND lease_expires_at < ? ORDER BY id

-- name: waiting_since
SELECT {job_columns} FROM jobs WHERE state = 'queued' AND lane = ? AND created_at < ?
ORDER BY id LIMIT 1000

-- name: recently_stalled
SELECT {job_columns} FROM jobs
WHERE id IN (SELECT job_id FROM events WHERE type = 'stalled' AND at >= ?)
ORDER BY id DESC LIMIT 1000

-- name: latest_done
SELECT {job_columns} FROM jobs WHERE kind = ? AND state = 'done' ORDER BY id DESC LIMIT 1

-- name: usage
SELECT lane, kind, project, COUNT(*),
       TOTAL(CASE WHEN finished_at IS NOT NULL AND started_at IS NOT NULL
                  THEN MAX(finished_at - started_at, 0) END),
       TOTAL(tokens), TOTAL(cost)
FROM jobs INDEXED BY jobs_by_created WHERE created_at BETWEEN ? AND ?
GROUP BY lane, kind, project

-- name: attempt_outcomes
SELECT jobs.kind, SUM(events.type = 'finished'), SUM(events.type = 'failed')
FROM events INDEXED BY events_outcomes JOIN jobs ON jobs.id = events.job_id
WHERE events.type IN ('finished', 'failed') AND events.at > ? AND jobs.lane = ?
GROUP BY jobs.kind

-- name: live_projects
SELECT DISTINCT project FROM jobs WHERE state IN ({live}) AND project IS NOT NULL

-- name: done_lacking
SELECT {job_columns} FROM jobs WHERE state = 'done' AND kind IN ({marks}) AND id > ?
AND NOT EXISTS (SELECT 1 FROM events WHERE events.job_id = jobs.id AND events.type = ?)
ORDER BY id LIMIT ?

-- ---------------------------------------------------------------------------
-- Probes: is there anything for a maintenance kind to do? Each is one cheap EXISTS.

-- name: any_expired_lease
SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'running' AND lease_expires_at < ?)

-- name: any_unflagged_wait
SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND lane = ? AND created_at < ?
               AND NOT EXISTS (SELECT 1 FROM events
                               WHERE events.job_id = jobs.id AND events.type = 'stall_flagged'))

-- name: any_queued_since
SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND lane = ? AND created_at <= ?)

-- name: any_failure_since
SELECT EXISTS (SELECT 1 FROM events INDEXED BY events_outcomes
               WHERE type IN ('finished', 'failed') AND type = 'failed' AND at > ?)

-- name: any_finished_before
SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_by_finished
               WHERE finished_at < ? AND state IN ({terminal}))

-- ---------------------------------------------------------------------------
-- Retention and aging

-- name: prunable
-- Oldest first along the finished_at index, stopping at the limit; left to itself
-- the planner walks every finished job by state.
SELECT j.id, (SELECT COUNT(*) FROM events e WHERE e.job_id = j.id)
FROM jobs j INDEXED BY jobs_by_finished
WHERE j.finished_at < ? AND j.state IN ({terminal})
  AND j.id < (SELECT MAX(id) FROM jobs)
  AND j.id IS NOT (SELECT job_id FROM events ORDER BY id DESC LIMIT 1)
  AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = j.id)
  AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.root_id = j.id AND c.id != j.id)
ORDER BY j.finished_at, j.id LIMIT ?

-- name: delete_events_of
DELETE FROM events WHERE job_id IN ({marks})

-- name: delete_jobs
DELETE FROM jobs WHERE id IN ({marks})

-- name: agable
SELECT id, priority, steps FROM (
    SELECT id, priority, order_key, CAST((? - created_at) / ? AS INTEGER) AS steps,
           IFNULL((SELECT json_extract(data, '$.steps') FROM events
                   WHERE events.job_id = jobs.id AND type = 'aged' ORDER BY id DESC LIMIT 1),
                  0) AS last
    FROM jobs WHERE state = 'queued' AND lane = ? AND created_at <= ?)
WHERE steps > last ORDER BY order_key LIMIT ?

-- ---------------------------------------------------------------------------
-- Housekeeping

-- name: schema_version
PRAGMA user_version
