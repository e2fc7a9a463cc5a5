-- Every statement that changes the ledger, each written once, in psycopg's %(name)s style.
--
-- A block starts with `-- name: <name>` and a line saying what it does; app/ledger/queries.py
-- binds each block to a constant of the same name in capitals. Worker writes are fenced by
-- the job's (run, attempt): a worker that lost its lease can no longer change the row.

-- name: insert_jobs
-- New jobs, many per statement (the accept path's group commit, a relay's ticks) or one (enqueue,
-- a keyed POST), as one JSON array of rows: one parameter, serialised in one call, where an array
-- per column cost the driver a dump per column and value (2.5x the client's CPU). A row whose
-- idempotency key is taken, whose schedule tick already has its job, or whose unique key an
-- in-flight job of its task holds (ux_jobs_unique_in_flight), is not inserted: it is left out
-- of the ids returned, and the others are inserted. With %(notify)s, inserting any row also wakes the relay
-- when the transaction commits (a NOTIFY of its own cost the API a round trip and the
-- database a transaction per batch). Each row's `queued` event is logged with it, and readers of
-- the log are woken at commit (every statement that changes a job's state does both, as here:
-- pg_notify in the WHERE runs once per row, and identical notifications fold in a transaction).
WITH inserted AS (
    INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, available_at,
                      idempotency_key, request_hash, client_id, parent_id, schedule, scheduled_for,
                      unique_key, concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period,
                      trace_context)
    SELECT t.id, t.task, t.queue, t.payload, 'queued', t.priority, t.max_attempts,
           now() + make_interval(secs => t.delay), t.idempotency_key, t.request_hash, t.client_id,
           t.parent_id, t.schedule, t.scheduled_for, t.unique_key, t.concurrency_key,
           t.concurrency_limit, t.rate_key, t.rate_limit, t.rate_period, t.trace_context
    FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb))
         AS t(id uuid, task text, queue text, payload jsonb, priority smallint, max_attempts integer,
              delay float8, idempotency_key text, request_hash text, client_id text, parent_id uuid,
              schedule text, scheduled_for timestamptz, unique_key text, concurrency_key text,
              concurrency_limit integer, rate_key text, rate_limit integer, rate_period float8,
              trace_context text)
    ON CONFLICT DO NOTHING
    RETURNING id, task, queue, client_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'queued', 0 FROM inserted WHERE pg_notify('conveyor_events', '')::text = ''
), woken AS (
    SELECT pg_notify('conveyor_jobs', '') AS rang WHERE CAST(%(notify)s AS boolean)
)
-- `rang` is selected: a CTE column nobody reads is not computed, and the NOTIFY with it.
SELECT inserted.id, woken.rang FROM inserted LEFT JOIN woken ON true

-- name: notify_relay
-- Wakes the relay; PostgreSQL delivers it when the transaction commits.
SELECT pg_notify('conveyor_jobs', '')

-- name: find_by_idempotency_key
-- The job a client's idempotency key already made, the fingerprint of the request that made it,
-- and whether the key's window (%(ttl)s seconds from that job's creation) has passed.
SELECT id, task, state, request_hash, created_at < now() - make_interval(secs => %(ttl)s) AS expired
FROM jobs
WHERE idempotency_key = %(key)s AND coalesce(client_id, '') = coalesce(%(client_id)s::text, '')

-- name: find_unique_holders
-- For each new job (id, task, unique key) that insert_jobs left out, the job of its task that
-- holds the key while in flight, and its state; a job the index refused whose holder has finished
-- since is not listed (the caller inserts it again). A statement of its own: its snapshot is taken
-- after the INSERT, which waited for the holder's transaction, so a holder that committed is seen.
SELECT t.id, j.id, j.state
FROM unnest(%(ids)s::uuid[], %(tasks)s::text[], %(keys)s::text[]) AS t(id, task, unique_key)
JOIN jobs j ON j.task = t.task AND j.unique_key = t.unique_key AND j.id <> t.id
           AND j.state IN ('queued', 'retrying', 'running')

-- name: unique_holder_of_job
-- The in-flight job of the same task that holds this job's unique key, if any.
SELECT h.task, h.id FROM jobs d
JOIN jobs h ON h.task = d.task AND h.unique_key = d.unique_key AND h.id <> d.id
           AND h.state IN ('queued', 'retrying', 'running')
WHERE d.id = %(id)s

-- name: release_idempotency_key
-- Frees a client's key whose window has passed from the job that holds it: the same key makes
-- a new job.
UPDATE jobs SET idempotency_key = NULL
WHERE idempotency_key = %(key)s AND coalesce(client_id, '') = coalesce(%(client_id)s::text, '')
  AND created_at < now() - make_interval(secs => %(ttl)s)
RETURNING id

-- name: claim
-- Claims due jobs for a worker: queued|retrying → running, attempts+1, a lease; one attempt row each.
-- Each (id, task) pair is a doorbell: a job is claimed only when its message names the task the
-- ledger holds for it, and the claim returns what to run (task and payload) from the ledger.
-- A job that is finished, running elsewhere, not due or out of attempts is left out, and so is a
-- job of a paused queue (the paused queues are read once per statement: an InitPlan) and a job
-- with limits (claim_limited counts those; the worker asks it for what this one left out).
WITH asked AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(tasks)s::text[]) AS a(id, task)
), claimed AS (
    UPDATE jobs j SET state = 'running', attempts = j.attempts + 1,
           started_at = CASE WHEN j.attempts = 0 THEN now() ELSE j.started_at END,
           lease_expires_at = now() + make_interval(secs => %(lease)s),
           worker_id = %(worker_id)s, updated_at = now()
    FROM asked a
    -- `COLLATE "C"` keeps the state's index out of the plan: the rows are found by their ids.
    -- A generic plan made while the table's statistics are stale (a bulk insert that autovacuum
    -- has not analyzed yet) otherwise walked every queued job's index entry for each claim.
    WHERE j.id = a.id AND j.task = a.task AND j.state COLLATE "C" IN ('queued', 'retrying')
      AND j.available_at <= now() AND j.attempts < j.max_attempts
      AND j.concurrency_key IS NULL AND j.rate_key IS NULL
      AND j.queue <> ALL (ARRAY(SELECT queue FROM paused_queues))
    RETURNING j.id, j.run, j.attempts, j.max_attempts, j.task, j.payload::text, j.queue, j.client_id, j.trace_context
), history AS (
    INSERT INTO job_attempts (job_id, run, attempt, worker_id)
    SELECT id, run, attempts, %(worker_id)s FROM claimed
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'running', attempts FROM claimed WHERE pg_notify('conveyor_events', '')::text = ''
)
SELECT id, run, attempts, max_attempts, task, payload, trace_context FROM claimed

-- name: lock_flow_keys
-- Claims of jobs of one (task, concurrency key) take turns until their transactions end, so the
-- count of running jobs that claim_limited then makes is one no concurrent claim passes. A
-- statement of its own (a statement's snapshot is taken before a lock it waits for is granted);
-- the locks are taken in one order, so two bursts never wait for each other in a circle.
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended(task || chr(31) || concurrency_key, 22) AS k FROM jobs
    WHERE id = ANY(%(ids)s::uuid[]) AND concurrency_key IS NOT NULL
    ORDER BY k
) AS keys

-- name: claim_limited
-- Claims due jobs of tasks with limits, as claim does, within their limits: per (task,
-- concurrency key) no more running than its limit (after lock_flow_keys, in one transaction),
-- per (task, rate key) no more starts in the current fixed window than its rate (the window's
-- row counts them). The jobs asked for that wait but may not start (a limit, a paused queue,
-- not due) are held back: marked unpublished (their message is spent) for the relay to publish
-- again when they may start; one over its rate is due again when its window ends. Nothing fails
-- for a limit. Answers the claimed jobs and then the held ones (run NULL). Wakes the relay when
-- it held one back or started a rate-limited job (the relay sends a window's worth ahead).
WITH asked AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(tasks)s::text[]) WITH ORDINALITY AS a(id, task, pos)
), waiting AS (
    SELECT DISTINCT ON (j.id) j.id, j.task, j.queue, j.concurrency_key, j.concurrency_limit,
           j.rate_key, j.rate_limit, j.rate_period, a.pos, j.available_at <= now() AS due
    FROM asked a JOIN jobs j ON j.id = a.id AND j.task = a.task
    -- Found by their ids, never through the state's index (see claim).
    WHERE j.state COLLATE "C" IN ('queued', 'retrying') AND j.attempts < j.max_attempts
    ORDER BY j.id, a.pos
), startable AS (
    SELECT w.*, row_number() OVER (PARTITION BY w.task, w.concurrency_key ORDER BY w.pos) AS turn
    FROM waiting w
    WHERE w.due AND w.queue <> ALL (ARRAY(SELECT queue FROM paused_queues))
), within_concurrency AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.task, s.rate_key ORDER BY s.pos) AS rate_turn
    FROM startable s
    WHERE s.concurrency_key IS NULL OR s.turn <= s.concurrency_limit - (
        SELECT count(*) FROM jobs r
        WHERE r.task = s.task AND r.concurrency_key = s.concurrency_key AND r.state = 'running')
), rate_wanted AS (
    SELECT task, rate_key, max(rate_limit) AS allowed, max(rate_period) AS period, count(*) AS wanted,
           to_timestamp(floor(extract(epoch FROM now()) / max(rate_period)) * max(rate_period)) AS window_start
    FROM within_concurrency WHERE rate_key IS NOT NULL
    GROUP BY task, rate_key
), windows AS (
    -- A claim whose transaction began before the row's window (an older now()) takes nothing.
    INSERT INTO flow_rate_windows AS w (task, rate_key, window_start, allowed, used, granted)
    SELECT task, rate_key, window_start, allowed, least(wanted, allowed), least(wanted, allowed)
    FROM rate_wanted
    ON CONFLICT (task, rate_key) DO UPDATE SET
        granted = CASE WHEN w.window_start < EXCLUDED.window_start THEN EXCLUDED.granted
                       WHEN w.window_start = EXCLUDED.window_start
                       THEN greatest(0, least(EXCLUDED.granted, EXCLUDED.allowed - w.used))
                       ELSE 0 END,
        used = CASE WHEN w.window_start < EXCLUDED.window_start THEN EXCLUDED.used
                    WHEN w.window_start = EXCLUDED.window_start
                    THEN greatest(w.used, least(EXCLUDED.allowed, w.used + EXCLUDED.granted))
                    ELSE w.used END,
        window_start = greatest(w.window_start, EXCLUDED.window_start), allowed = EXCLUDED.allowed
    RETURNING w.task, w.rate_key, w.granted
), rate_verdicts AS (
    SELECT r.task, r.rate_key, w.granted, r.window_start + make_interval(secs => r.period) AS frees_at
    FROM rate_wanted r JOIN windows w ON w.task = r.task AND w.rate_key = r.rate_key
), chosen AS (
    SELECT c.id FROM within_concurrency c
    LEFT JOIN rate_verdicts v ON v.task = c.task AND v.rate_key = c.rate_key
    WHERE c.rate_key IS NULL OR c.rate_turn <= v.granted
), claimed AS (
    UPDATE jobs j SET state = 'running', attempts = j.attempts + 1,
           started_at = CASE WHEN j.attempts = 0 THEN now() ELSE j.started_at END,
           lease_expires_at = now() + make_interval(secs => %(lease)s),
           worker_id = %(worker_id)s, updated_at = now()
    FROM chosen c
    WHERE j.id = c.id AND j.state COLLATE "C" IN ('queued', 'retrying')
    RETURNING j.id, j.run, j.attempts, j.max_attempts, j.task, j.payload::text, j.queue, j.client_id, j.trace_context,
              CASE WHEN j.rate_key IS NOT NULL THEN pg_notify('conveyor_jobs', 'slot')::text END AS rang
), history AS (
    INSERT INTO job_attempts (job_id, run, attempt, worker_id)
    SELECT id, run, attempts, %(worker_id)s FROM claimed
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'running', attempts FROM claimed WHERE pg_notify('conveyor_events', '')::text = ''
), held AS (
    UPDATE jobs j SET published_at = NULL,
           available_at = CASE WHEN v.frees_at > j.available_at THEN v.frees_at ELSE j.available_at END,
           updated_at = now()
    FROM waiting w
    LEFT JOIN within_concurrency c ON c.id = w.id
    LEFT JOIN rate_verdicts v ON v.task = c.task AND v.rate_key = c.rate_key
    WHERE j.id = w.id AND w.id NOT IN (SELECT id FROM chosen) AND j.state IN ('queued', 'retrying')
    RETURNING j.id, j.task, pg_notify('conveyor_jobs', 'slot')::text AS rang
)
SELECT id, run, attempts, max_attempts, task, payload, rang, trace_context FROM claimed
UNION ALL
SELECT id, NULL, NULL, NULL, task, NULL, rang, NULL FROM held

-- name: job_task
-- The task and state the ledger holds for a job (a message that rang for it named another task).
SELECT task, state FROM jobs WHERE id = %(id)s

-- name: succeed
-- Fenced: running → succeeded with its result, for each (id, run, attempt) still owned; wakes
-- the relay when one held a concurrency slot. Once the jobs' rows are locked (the steps that
-- succeeded and those they release), their workflows' rows are, in id order: the 0016 trigger,
-- which fires at the statement's end, would lock them in whatever order the steps moved, and two
-- batches over the same two workflows in opposite orders would deadlock. Every statement that
-- moves steps of several workflows locks jobs first, then workflows in id order.
WITH input AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(runs)s::integer[], %(attempts)s::integer[],
                         %(results)s::text[]) AS t(id, run, attempt, result)
), done AS (
    UPDATE jobs j SET state = 'succeeded', result = CAST(i.result AS jsonb), progress = 100,
           finished_at = now(), lease_expires_at = NULL, last_error = NULL, updated_at = now()
    FROM input i
    WHERE j.id = i.id AND j.run = i.run AND j.attempts = i.attempt AND j.state = 'running'
    RETURNING j.id, j.run, j.attempts, j.task, j.concurrency_key, j.queue, j.client_id, j.downstream,
              j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'succeeded', attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
), closed AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'succeeded', error = NULL,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
), released AS (
    -- Workflow steps after the steps that succeeded: each success counts down once (a step
    -- succeeds once), the one that brings a step to zero makes it queued and wakes the relay.
    -- Two upstream steps succeeding at once take turns on the row, the second counting from the
    -- first's result (the row is read again once its lock is granted).
    UPDATE jobs d SET upstream_left = d.upstream_left - n.k, updated_at = now(),
           state = CASE WHEN d.upstream_left - n.k <= 0 THEN 'queued' ELSE 'waiting' END,
           available_at = CASE WHEN d.upstream_left - n.k <= 0 THEN now() ELSE d.available_at END
    FROM (SELECT s.id, count(*) AS k FROM done, unnest(done.downstream) AS s(id) GROUP BY s.id) AS n
    WHERE d.id = n.id AND d.state = 'waiting'
    RETURNING d.id, d.task, d.queue, d.client_id, d.state, d.attempts,
              CASE WHEN d.state = 'queued' THEN pg_notify('conveyor_jobs', '')::text END AS rang
), released_logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'queued', attempts FROM released
    WHERE state = 'queued' AND pg_notify('conveyor_events', '')::text = ''
), held AS (
    -- Read once 'released' has run to its end: the steps it locks come before the workflows.
    SELECT w.id FROM workflows w
    WHERE w.id IN (SELECT workflow_id FROM done) AND (SELECT count(*) FROM released) >= 0
    ORDER BY w.id FOR NO KEY UPDATE
), freed AS (
    -- The keys whose slot freed, each with the running length of the names before it.
    SELECT k.task, k.concurrency_key, octet_length(k.task) + octet_length(k.concurrency_key) + 1 AS size,
           sum(octet_length(k.task) + octet_length(k.concurrency_key) + 1)
               OVER (ORDER BY k.task, k.concurrency_key) AS upto
    FROM (SELECT DISTINCT task, concurrency_key FROM done WHERE concurrency_key IS NOT NULL) AS k
), woken AS (
    -- A slot of a concurrency key freed: the relay publishes that key's next job. One NOTIFY
    -- names every key freed, 'slot:<task><US><key><RS><task><US><key>…', so that the relay wakes
    -- once per batch and its take visits only the keys named. Keys go in chunks of about 4 kB (a
    -- payload holds less than 8 kB); a chunk with a name of 3,900 bytes or more, or with a
    -- separator in a key, is 'slot' alone (the take visits every key). One row, whatever the
    -- number of keys ('rang' is selected: an unread column is not computed).
    SELECT string_agg(pg_notify('conveyor_jobs', c.payload)::text, '') AS rang
    FROM (
        SELECT CASE WHEN max(f.size) < 3900 AND bool_and(strpos(f.concurrency_key, chr(30)) = 0)
                    THEN 'slot:' || string_agg(f.task || chr(31) || f.concurrency_key, chr(30)
                                               ORDER BY f.task, f.concurrency_key)
                    ELSE 'slot' END AS payload
        FROM freed f GROUP BY floor(f.upto / 4000)
    ) AS c
)
SELECT done.id, done.run, done.attempts, woken.rang FROM done LEFT JOIN woken ON true
WHERE (SELECT count(*) FROM held) >= 0

-- name: retry
-- Fenced: running → retrying, due again after %(delay)s seconds; wakes the relay. A job whose
-- cancellation was asked is never retried: it ends cancelled instead. Returns the new state.
WITH done AS (
    UPDATE jobs SET state = CASE WHEN cancel_requested_at IS NULL THEN 'retrying' ELSE 'cancelled' END,
           finished_at = CASE WHEN cancel_requested_at IS NOT NULL THEN now() END,
           last_error = %(error)s, lease_expires_at = NULL,
           available_at = now() + make_interval(secs => %(delay)s), published_at = NULL,
           updated_at = now()
    WHERE id = %(id)s AND run = %(run)s AND attempts = %(attempt)s AND state = 'running'
    RETURNING id, run, attempts, state, task, queue, client_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, state, attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
), closed AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = done.state, error = %(error)s,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
)
SELECT done.state, pg_notify('conveyor_jobs', '') FROM done

-- name: bury
-- Fenced: running → dead (a permanent error, or the last attempt failed); the relay puts its
-- copy in <queue>.XQ (woken when the job held a concurrency slot, which is free now).
WITH done AS (
    UPDATE jobs SET state = 'dead', last_error = %(error)s, lease_expires_at = NULL,
           finished_at = now(), published_at = NULL, updated_at = now()
    WHERE id = %(id)s AND run = %(run)s AND attempts = %(attempt)s AND state = 'running'
    RETURNING id, run, attempts, concurrency_key, task, queue, client_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'dead', attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
), closed AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'dead', error = %(error)s,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
)
SELECT done.id, CASE WHEN done.concurrency_key IS NOT NULL THEN pg_notify('conveyor_jobs', 'slot')::text END
FROM done

-- name: report_progress
-- Fenced: records progress (0-100) and renews the lease; says whether the job's cancellation
-- was asked, so a task that reports progress learns of it then.
UPDATE jobs SET progress = %(progress)s, lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = %(id)s AND run = %(run)s AND attempts = %(attempt)s AND state = 'running'
RETURNING id, cancel_requested_at IS NOT NULL

-- name: renew_leases
-- Renews the leases of the jobs a worker is running (its heartbeat).
UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running' AND worker_id = %(worker_id)s

-- name: release
-- A worker shutting down mid-attempt hands its jobs back: running → retrying, due now; or dead
-- when that was the last attempt, as the reaper does (the relay then puts its copy in .XQ);
-- or cancelled when its cancellation was asked.
WITH done AS (
    UPDATE jobs SET state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                                 WHEN attempts >= max_attempts THEN 'dead' ELSE 'retrying' END,
           finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR attempts >= max_attempts
                              THEN now() END,
           available_at = now(), published_at = NULL,
           lease_expires_at = NULL, updated_at = now(), last_error = %(error)s
    WHERE id = ANY(%(ids)s::uuid[]) AND worker_id = %(worker_id)s AND state = 'running'
    RETURNING id, run, attempts, state, task, queue, client_id, workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, state, attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
), closed AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'interrupted', error = %(error)s,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM done)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT done.id, pg_notify('conveyor_jobs', '') FROM done WHERE (SELECT count(*) FROM held) >= 0

-- name: unclaim
-- Claims that never started (the worker stopped before a thread took them) are undone: the
-- attempt is given back, its row removed, and the job is due again at once; or, when its
-- cancellation was asked meanwhile, cancelled.
WITH asked AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(runs)s::integer[], %(attempts)s::integer[])
             AS t(id, run, attempt)
), undone AS (
    UPDATE jobs j SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                                   WHEN j.attempts = 1 THEN 'queued' ELSE 'retrying' END,
           finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL THEN now() END,
           attempts = j.attempts - 1,
           started_at = CASE WHEN j.attempts = 1 THEN NULL ELSE j.started_at END,
           available_at = now(), published_at = NULL, lease_expires_at = NULL, updated_at = now()
    FROM asked a
    WHERE j.id = a.id AND j.run = a.run AND j.attempts = a.attempt
      AND j.worker_id = %(worker_id)s AND j.state = 'running'
    RETURNING j.id, j.run, j.attempts + 1 AS attempt, j.attempts, j.state, j.task, j.queue, j.client_id,
              j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, state, attempts FROM undone WHERE pg_notify('conveyor_events', '')::text = ''
), forgotten AS (
    DELETE FROM job_attempts h USING undone u
    WHERE h.job_id = u.id AND h.run = u.run AND h.attempt = u.attempt
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM undone)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT id, pg_notify('conveyor_jobs', '') FROM undone WHERE (SELECT count(*) FROM held) >= 0

-- name: take_publishable
-- Takes due, unpublished jobs for one relay (SKIP LOCKED: other relays take other rows) and marks
-- them published, in one statement, oldest due first. The mark is in the relay's transaction,
-- which commits only once the broker took the messages: a failed publish rolls it back. (now()
-- is the transaction's start, so the mark reads the same as one written after the publish.)
-- Jobs of tasks with limits are take_limited's; jobs of a paused queue wait for its resume. Each
-- job's trace context comes along for the relay's publish span (NULL with tracing off).
WITH due AS (
    SELECT id FROM jobs
    WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at <= now()
      AND concurrency_key IS NULL AND rate_key IS NULL
      AND queue <> ALL (ARRAY(SELECT queue FROM paused_queues))
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE jobs j SET published_at = now() FROM due WHERE j.id = due.id
    RETURNING j.id, j.task, j.queue, j.priority, j.run, j.available_at, j.trace_context
)
SELECT id, task, queue, priority, run, trace_context FROM marked ORDER BY available_at

-- name: take_limited
-- Takes due jobs of tasks with limits for one relay, as take_publishable does, but only as many
-- per key as may start: per (task, concurrency key) its limit less the jobs holding a slot
-- (running, or published and not claimed yet); per (task, rate key) its rate less what is
-- published and not claimed yet. Each key's first jobs come first (a rank per key, by priority
-- then due time), so one key's backlog never stands before another key's job. The keys are
-- walked one index probe each (a loose index scan) and each key reads only the jobs it may
-- publish, so a take costs what the keys cost, not what their backlogs hold. With %(every)s
-- false, only the concurrency keys named (%(tasks)s, %(keys)s: those whose slot a success
-- freed) are visited, and no rate key. The claim checks again, exactly: two relays racing here
-- publish a little ahead, never run more.
WITH RECURSIVE walked_keys AS (
    -- Each key with its limit, as its first waiting job holds it.
    (SELECT task, concurrency_key AS key, concurrency_limit AS allowed FROM jobs
     WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NOT NULL
       AND %(every)s::boolean
     ORDER BY task, concurrency_key LIMIT 1)
    UNION ALL
    SELECT later.task, later.key, later.allowed FROM walked_keys k CROSS JOIN LATERAL (
        SELECT task, concurrency_key AS key, concurrency_limit AS allowed FROM jobs
        WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NOT NULL
          AND (task, concurrency_key) > (k.task, k.key)
        ORDER BY task, concurrency_key LIMIT 1) AS later
), named_keys AS (
    SELECT first.task, first.key, first.allowed
    FROM unnest(%(tasks)s::text[], %(keys)s::text[]) AS n(task, key)
    CROSS JOIN LATERAL (
        SELECT task, concurrency_key AS key, concurrency_limit AS allowed FROM jobs
        WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NOT NULL
          AND task = n.task AND concurrency_key = n.key AND NOT %(every)s::boolean
        ORDER BY task, concurrency_key LIMIT 1) AS first
), concurrency_keys AS (
    SELECT * FROM walked_keys UNION ALL SELECT * FROM named_keys
), rate_keys AS (
    (SELECT task, rate_key AS key, rate_limit AS allowed FROM jobs
     WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NULL
       AND rate_key IS NOT NULL AND %(every)s::boolean
     ORDER BY task, rate_key LIMIT 1)
    UNION ALL
    SELECT later.task, later.key, later.allowed FROM rate_keys k CROSS JOIN LATERAL (
        SELECT task, rate_key AS key, rate_limit AS allowed FROM jobs
        WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND concurrency_key IS NULL
          AND rate_key IS NOT NULL AND (task, rate_key) > (k.task, k.key)
        ORDER BY task, rate_key LIMIT 1) AS later
), paused AS (
    SELECT ARRAY(SELECT queue FROM paused_queues) AS queues
), by_concurrency AS (
    -- No window function here: ranking a key's jobs before the LIMIT reads every job that ties
    -- with the last one taken (a bulk insert's jobs share one due time), not just the LIMIT.
    SELECT free.id, free.priority, free.available_at, free.task, k.key AS flow_key, true AS by_key,
           free.rate_key, free.rate_limit
    FROM concurrency_keys k
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM jobs b
        WHERE b.task = k.task AND b.concurrency_key = k.key
          AND (b.state = 'running' OR (b.published_at IS NOT NULL AND b.state IN ('queued', 'retrying')))
    ) AS busy
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.available_at, j.task, j.rate_key, j.rate_limit
        FROM jobs j, paused p
        WHERE j.task = k.task AND j.concurrency_key = k.key AND j.published_at IS NULL
          AND j.state IN ('queued', 'retrying') AND j.available_at <= now()
          AND j.queue <> ALL (p.queues)
        ORDER BY j.priority DESC, j.available_at
        LIMIT greatest(0, k.allowed - busy.n)
    ) AS free
), by_rate AS (
    SELECT free.id, free.priority, free.available_at, free.task, k.key AS flow_key, false AS by_key,
           free.rate_key, free.rate_limit
    FROM rate_keys k
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.available_at, j.task, j.rate_key, j.rate_limit
        FROM jobs j, paused p
        WHERE j.task = k.task AND j.concurrency_key IS NULL AND j.rate_key = k.key
          AND j.published_at IS NULL AND j.state IN ('queued', 'retrying') AND j.available_at <= now()
          AND j.queue <> ALL (p.queues)
        ORDER BY j.priority DESC, j.available_at
        LIMIT k.allowed
    ) AS free
), ranked AS (
    -- Each key's turn among the few jobs it may publish.
    SELECT c.*, row_number() OVER (PARTITION BY c.by_key, c.task, c.flow_key
                                   ORDER BY c.priority DESC, c.available_at) AS turn
    FROM (SELECT * FROM by_concurrency UNION ALL SELECT * FROM by_rate) AS c
), candidates AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.task, c.rate_key ORDER BY c.turn, c.priority DESC,
                                                                     c.available_at) AS rate_turn
    FROM ranked c
), chosen AS (
    -- A rate key sends at most its rate less what it has published and not claimed yet.
    SELECT c.id FROM candidates c
    WHERE c.rate_key IS NULL OR c.rate_turn <= c.rate_limit - (
        SELECT count(*) FROM jobs o
        WHERE o.task = c.task AND o.rate_key = c.rate_key AND o.published_at IS NOT NULL
          AND o.state IN ('queued', 'retrying'))
    ORDER BY c.turn, c.priority DESC, c.available_at
    LIMIT %(limit)s
), locked AS (
    -- FOR UPDATE cannot sit beside window functions: the rows chosen are locked here.
    -- Found by their ids, never through the state's index (see claim).
    SELECT id FROM jobs
    WHERE id = ANY(ARRAY(SELECT id FROM chosen))
      AND published_at IS NULL AND state COLLATE "C" IN ('queued', 'retrying')
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE jobs j SET published_at = now() FROM locked WHERE j.id = locked.id
    RETURNING j.id, j.task, j.queue, j.priority, j.run, j.available_at, j.trace_context
)
SELECT id, task, queue, priority, run, trace_context FROM marked ORDER BY priority DESC, available_at

-- name: take_dead_letters
-- Takes dead jobs whose copy is still to go to <queue>.XQ for one relay, oldest death first, and
-- marks them sent as take_publishable marks its jobs (rolled back when the publish fails).
WITH dead AS (
    SELECT id FROM jobs
    WHERE published_at IS NULL AND state = 'dead'
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE jobs j SET published_at = now() FROM dead WHERE j.id = dead.id
    RETURNING j.id, j.task, j.queue, j.run, j.finished_at
)
SELECT id, task, queue, run FROM marked ORDER BY finished_at

-- name: seconds_until_next_due
-- How long until the next unpublished job is due (negative: one is due now; NULL: none). A job of
-- a paused queue is not counted (its resume wakes the relay), nor one with limits that is due
-- already (it waits for a slot, and whatever frees one wakes the relay).
WITH paused AS (SELECT ARRAY(SELECT queue FROM paused_queues) AS queues)
SELECT extract(epoch FROM least(
    (SELECT min(available_at) FROM jobs, paused
     WHERE published_at IS NULL AND state IN ('queued', 'retrying')
       AND concurrency_key IS NULL AND rate_key IS NULL AND queue <> ALL (paused.queues)),
    (SELECT min(available_at) FROM jobs, paused
     WHERE published_at IS NULL AND state IN ('queued', 'retrying') AND available_at > now()
       AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL) AND queue <> ALL (paused.queues))
) - now())

-- name: reap_expired_leases
-- Jobs whose worker stopped renewing the lease: back to retrying, or dead once attempts are used
-- up (the relay then puts the dead job's copy in <queue>.XQ), or cancelled when that was asked.
WITH expired AS (
    SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE jobs j SET
        state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'retrying' END,
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempts >= j.max_attempts
                           THEN now() END,
        published_at = NULL, available_at = now(), lease_expires_at = NULL, updated_at = now(),
        last_error = 'lease expired: worker ' || coalesce(j.worker_id, '?')
                     || ' stopped renewing it (crashed or stalled)'
    FROM expired WHERE j.id = expired.id
    RETURNING j.id, j.task, j.state, j.run, j.attempts, j.last_error, j.queue, j.client_id,
              j.concurrency_key IS NOT NULL OR j.rate_key IS NOT NULL AS limited, j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, state, attempts FROM upd WHERE pg_notify('conveyor_events', '')::text = ''
), history AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'lost', error = upd.last_error,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM upd WHERE a.job_id = upd.id AND a.run = upd.run AND a.attempt = upd.attempts
      AND a.finished_at IS NULL
), woken AS (
    -- A job with limits handed back freed its key's slot and waits for the relay's take of jobs
    -- with limits, which only a 'slot' wakes ('rang' is selected: an unread column is not computed).
    SELECT pg_notify('conveyor_jobs', 'slot') AS rang WHERE EXISTS (SELECT 1 FROM upd WHERE limited)
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM upd)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT upd.id, upd.task, upd.state, upd.attempts, woken.rang FROM upd LEFT JOIN woken ON true
WHERE (SELECT count(*) FROM held) >= 0

-- name: rearm_stale_publications
-- Publishes again jobs whose message went out long ago and was never claimed.
UPDATE jobs SET published_at = NULL
WHERE state IN ('queued', 'retrying') AND published_at < now() - make_interval(secs => %(age)s)

-- name: rearm_forgotten
-- The broker forgot its messages (Redis flushed or restarted without them): publish again, at
-- once, every job published before the loss was noticed (the cutoff) and not yet claimed, and the
-- dead-letter copy of every dead job still within the copies' TTL. Idempotent for one cutoff, so
-- several relays that notice one loss may all run it. No state changes: no job_event.
UPDATE jobs SET published_at = NULL
WHERE published_at < %(cutoff)s
  AND (state IN ('queued', 'retrying')
       OR (state = 'dead' AND finished_at > %(cutoff)s - make_interval(secs => %(dead_ttl)s)))

-- name: hold_republishable
-- Locks, before `conveyor queues migrate` deletes a queue, every job of it whose message the
-- delete could take along (queued or retrying; dead within the copies' TTL), published or not:
-- until the migration commits, no relay takes them (SKIP LOCKED) and publishes one into the new
-- queue, which republish_queue would then count and publish a second time. Their ids.
SELECT id FROM jobs
WHERE queue = %(queue)s
  AND ((%(jobs)s AND state IN ('queued', 'retrying'))
       OR (%(dead)s AND state = 'dead' AND finished_at > now() - make_interval(secs => %(dead_ttl)s)))
ORDER BY id FOR UPDATE

-- name: republish_queue
-- A queue deleted to be declared again with another type (`conveyor queues migrate`) took its
-- messages along: publish again every job of it that was published and not yet claimed (when
-- `jobs`), and the dead-letter copy of every dead job of it still within the copies' TTL (when
-- `dead`), of the jobs hold_republishable locked (`held`) before the delete: a job added since
-- may have gone to the new queue. The held rows were chosen by queue, state and TTL and stay
-- locked by this transaction, so those tests are not made again. No state changes: no
-- job_event. The caller wakes the relay (notify_relay).
UPDATE jobs SET published_at = NULL
WHERE id = ANY(%(held)s::uuid[]) AND published_at IS NOT NULL
RETURNING state = 'dead' AS dead

-- name: count_republishable
-- What republish_queue would publish again, as (jobs, dead-letter copies).
SELECT count(*) FILTER (WHERE state <> 'dead'), count(*) FILTER (WHERE state = 'dead') FROM jobs
WHERE queue = %(queue)s AND published_at IS NOT NULL
  AND ((%(jobs)s AND state IN ('queued', 'retrying'))
       OR (%(dead)s AND state = 'dead' AND finished_at > now() - make_interval(secs => %(dead_ttl)s)))

-- name: cancel
-- queued|retrying|waiting → cancelled: a job that has not started never will. A job with limits
-- whose message was out held a slot of its key (or a place in its rate's allowance): the relay
-- is woken ('slot') to publish that key's next job.
WITH done AS (
    UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND state IN ('queued', 'retrying', 'waiting')
    RETURNING id, task, queue, client_id, attempts,
              published_at IS NOT NULL AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL)
              AS held_slot
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'cancelled', attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
)
SELECT id, CASE WHEN held_slot THEN pg_notify('conveyor_jobs', 'slot')::text END FROM done

-- name: request_cancel
-- Asks a running job to stop: records when (the first request's time is kept) and wakes the
-- worker running it, whose listener takes the job id from the payload when this commits.
WITH asked AS (
    UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
    WHERE id = %(id)s AND state = 'running'
    RETURNING id
)
SELECT id, pg_notify('conveyor_cancel', id::text) FROM asked

-- name: listen_for_cancels
-- A worker's listener: woken by request_cancel with the job id.
LISTEN conveyor_cancel

-- name: cancel_requests
-- Of the jobs a worker runs, those whose cancellation was asked (its poll, beside the NOTIFY).
SELECT id FROM jobs
WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running' AND cancel_requested_at IS NOT NULL

-- name: finish_cancelled
-- Fenced: running → cancelled, for an attempt that stopped because its cancellation was asked
-- (or was interrupted after the grace); its attempt is recorded as cancelled, and it is never
-- retried. Exclusive with succeed: both need the attempt still running.
WITH done AS (
    UPDATE jobs SET state = 'cancelled', last_error = %(error)s, lease_expires_at = NULL,
           finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND run = %(run)s AND attempts = %(attempt)s AND state = 'running'
    RETURNING id, run, attempts, concurrency_key, task, queue, client_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'cancelled', attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
), closed AS (
    UPDATE job_attempts a SET finished_at = now(), outcome = 'cancelled', error = %(error)s,
           duration_seconds = extract(epoch FROM now() - a.started_at)
    FROM done WHERE a.job_id = done.id AND a.run = done.run AND a.attempt = done.attempts
)
-- A slot of a concurrency key freed: the relay publishes that key's next job at once.
SELECT done.id, CASE WHEN done.concurrency_key IS NOT NULL THEN pg_notify('conveyor_jobs', 'slot')::text END
FROM done

-- name: replay_dead
-- dead → queued as a new run (attempts from 0, history kept), oldest first; wakes the relay.
-- The dead run's copy in <queue>.XQ, if it went out, is recorded as stale for the relay to remove.
-- A job whose unique key another job holds in flight stays dead, and of several dead jobs with
-- one unique key only the oldest is replayed: the unique index would refuse the others.
WITH candidates AS (
    SELECT d.id, d.queue, d.run, d.published_at, d.task, d.unique_key, d.created_at FROM jobs d
    WHERE d.state = 'dead'
      AND (%(task)s::text IS NULL OR d.task = %(task)s)
      AND (%(ids)s::uuid[] IS NULL OR d.id = ANY(%(ids)s::uuid[]))
      AND (d.unique_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM jobs h WHERE h.task = d.task AND h.unique_key = d.unique_key
              AND h.state IN ('queued', 'retrying', 'running')))
    ORDER BY d.created_at LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED
), chosen AS (
    SELECT DISTINCT ON (coalesce(unique_key, id::text), CASE WHEN unique_key IS NULL THEN '' ELSE task END)
           id, queue, run, published_at
    FROM candidates ORDER BY coalesce(unique_key, id::text), CASE WHEN unique_key IS NULL THEN '' ELSE task END,
           created_at
), replayed AS (
    UPDATE jobs j SET state = 'queued', run = j.run + 1, attempts = 0, progress = 0,
           available_at = now(), published_at = NULL, started_at = NULL, finished_at = NULL,
           last_error = NULL, result = NULL, worker_id = NULL, cancel_requested_at = NULL,
           updated_at = now()
    FROM chosen c WHERE j.id = c.id
    RETURNING j.id, j.task, j.queue, j.client_id, j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'queued', 0 FROM replayed WHERE pg_notify('conveyor_events', '')::text = ''
), stale AS (
    INSERT INTO stale_dead_letters (queue, job_id, run)
    SELECT queue, id, run FROM chosen WHERE published_at IS NOT NULL
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM replayed)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT c.id, c.queue, c.run, pg_notify('conveyor_jobs', '') FROM chosen c JOIN replayed r ON r.id = c.id
WHERE (SELECT count(*) FROM held) >= 0

-- name: discard_dead
-- Deletes dead jobs with their history, oldest first; their copies in <queue>.XQ become stale.
-- A discarded workflow step can never succeed, so what comes after it can never run: the steps
-- right after it that wait, or were cancelled for an upstream step, become cancelled with the
-- reason `discarded upstream <step>` (no `upstream ` prefix: a replay of another step never
-- revives them, and they block what comes after them); steps further on that wait are
-- cancelled (`upstream <step> cancelled`). Nothing is left waiting for a step that is gone.
WITH RECURSIVE chosen AS (
    SELECT id, queue, run, published_at, step, downstream FROM jobs WHERE state = 'dead'
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
    ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), discarded AS (
    DELETE FROM jobs j USING chosen c WHERE j.id = c.id RETURNING j.id
), stale AS (
    INSERT INTO stale_dead_letters (queue, job_id, run)
    SELECT queue, id, run FROM chosen WHERE published_at IS NOT NULL
), reached (id, cause, direct) AS (
    SELECT d.id, 'discarded upstream ' || c.step, true
    FROM chosen c, unnest(c.downstream) AS d(id)
    UNION
    SELECT d.id, 'upstream ' || j.step || ' cancelled', false
    FROM reached r JOIN jobs j ON j.id = r.id, unnest(j.downstream) AS d(id)
), orphaned AS (
    UPDATE jobs j SET state = 'cancelled', last_error = o.cause,
           finished_at = coalesce(j.finished_at, now()), updated_at = now()
    FROM (SELECT DISTINCT ON (r.id) r.id, r.cause, s.state AS was
          FROM reached r JOIN jobs s ON s.id = r.id
          WHERE s.id NOT IN (SELECT id FROM chosen)
            AND (s.state = 'waiting' OR (r.direct AND s.state = 'cancelled' AND s.attempts = 0
                                         AND left(s.last_error, 9) = 'upstream '))
          ORDER BY r.id, r.direct DESC, r.cause) AS o
    WHERE j.id = o.id AND j.state = o.was
    RETURNING j.id, j.task, j.queue, j.client_id, j.attempts, o.was, j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'cancelled', attempts FROM orphaned
    WHERE was = 'waiting' AND pg_notify('conveyor_events', '')::text = ''
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM orphaned)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT c.id, c.queue, c.run FROM chosen c JOIN discarded d ON d.id = c.id
WHERE (SELECT count(*) FROM held) >= 0

-- name: take_stale_dead_letters
-- Locks recorded stale dead-letter copies for one relay's clean-up pass.
SELECT id, queue, job_id, run FROM stale_dead_letters ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED

-- name: forget_stale_dead_letters
-- The clean-up pass is done with these: removed, or no longer in the queue.
DELETE FROM stale_dead_letters WHERE id = ANY(%(ids)s::bigint[])

-- name: store_artifact
-- The file a job produced, whole, written in the job's own transaction (replaces an earlier
-- attempt's).
INSERT INTO job_artifacts (job_id, name, content_type, content, size)
VALUES (%(job_id)s, %(name)s, %(content_type)s, %(content)s, octet_length(%(content)s))
ON CONFLICT (job_id) DO UPDATE SET name = EXCLUDED.name, content_type = EXCLUDED.content_type,
    content = EXCLUDED.content, size = EXCLUDED.size, created_at = now()

-- name: clear_artifact
-- Forgets a job's file and its pieces (what an earlier run left), before it is written anew.
WITH pieces AS (
    DELETE FROM job_artifact_chunks WHERE job_id = %(job_id)s
)
DELETE FROM job_artifacts WHERE job_id = %(job_id)s

-- name: store_artifact_chunk
-- One piece of a job's file, in the job's own transaction; pieces are read back in seq order.
INSERT INTO job_artifact_chunks (job_id, seq, content) VALUES (%(job_id)s, %(seq)s, %(content)s)

-- name: close_artifact
-- The file whose pieces a job wrote: its name, type and size (content NULL: it is in pieces).
INSERT INTO job_artifacts (job_id, name, content_type, content, size)
VALUES (%(job_id)s, %(name)s, %(content_type)s, NULL, %(size)s)
ON CONFLICT (job_id) DO UPDATE SET name = EXCLUDED.name, content_type = EXCLUDED.content_type,
    content = NULL, size = EXCLUDED.size, created_at = now()

-- name: job_client
-- The key that enqueued a job (NULL: an operator's job, from the CLI or Python); no row: no job.
SELECT client_id FROM jobs WHERE id = %(id)s

-- name: job_state
-- The state of one job (NULL: no such job).
SELECT state FROM jobs WHERE id = %(id)s

-- name: job_states
-- The states of many jobs (a repeated batch's, for its answer); a job that is gone is left out.
SELECT id, state FROM jobs WHERE id = ANY(%(ids)s::uuid[])

-- name: upsert_worker
-- A worker's heartbeat: it is alive, with how much it runs and has run.
INSERT INTO workers (id, host, pid, queues, started_at, last_seen, in_flight, processed)
VALUES (%(id)s, %(host)s, %(pid)s, CAST(%(queues)s AS jsonb), %(started_at)s, now(), %(in_flight)s,
        %(processed)s)
ON CONFLICT (id) DO UPDATE SET last_seen = now(), in_flight = EXCLUDED.in_flight,
    processed = EXCLUDED.processed, queues = EXCLUDED.queues, stopped_at = NULL

-- name: stop_worker
-- A worker stopped cleanly.
UPDATE workers SET stopped_at = now(), in_flight = 0 WHERE id = %(id)s

-- name: upsert_relay
-- A relay's heartbeat: it is alive, and how many messages it has published.
INSERT INTO relays (id, host, pid, started_at, last_seen, published)
VALUES (%(id)s, %(host)s, %(pid)s, %(started_at)s, now(), %(published)s)
ON CONFLICT (id) DO UPDATE SET last_seen = now(), published = EXCLUDED.published, stopped_at = NULL

-- name: stop_relay
-- A relay stopped cleanly.
UPDATE relays SET stopped_at = now() WHERE id = %(id)s

-- name: insert_key
-- A new API key: its public id, its name, the HMAC of its secret and its scopes.
INSERT INTO api_keys (id, name, secret_hash, scopes)
VALUES (%(id)s, %(name)s, %(secret_hash)s, %(scopes)s::text[])
ON CONFLICT (name) DO NOTHING
RETURNING id

-- name: find_key
-- A key by its public id, for verifying a request; `hash_scheme` says which pepper hashed it.
SELECT id, name, secret_hash, scopes, revoked_at, hash_scheme FROM api_keys WHERE id = %(id)s

-- name: rehash_key
-- A key hashed before migration 0006 proved its secret: from now on it is stored with the
-- current pepper.
UPDATE api_keys SET secret_hash = %(secret_hash)s, hash_scheme = 'v2'
WHERE id = %(id)s AND hash_scheme = 'legacy'

-- name: live_key_scopes
-- The scopes of a key that is not revoked (no row: unknown or revoked), for work done on its behalf.
SELECT scopes FROM api_keys WHERE id = %(id)s AND revoked_at IS NULL

-- name: touch_key
-- A verified key was used (written at most once per cache period per API process).
UPDATE api_keys SET last_used_at = now() WHERE id = %(id)s

-- name: revoke_key
-- A live key by name stops working (within KEYS_CACHE_SECONDS in every API process), and its
-- dashboard sessions end at once, in the same statement.
WITH revoked AS (
    UPDATE api_keys SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING id
), ended AS (
    DELETE FROM dashboard_sessions WHERE key_id IN (SELECT id FROM revoked)
)
SELECT id FROM revoked

-- name: insert_secret
-- A secret generated at first start; when another process stored one first, this does nothing
-- (waiting for that one's commit) and find_secret reads the winner.
INSERT INTO conveyor_secrets (name, value) VALUES (%(name)s, %(value)s) ON CONFLICT (name) DO NOTHING

-- name: find_secret
-- A secret Conveyor generated for itself.
SELECT value FROM conveyor_secrets WHERE name = %(name)s

-- name: insert_session
-- A dashboard sign-in: the SHA-256 of the cookie's value, for a key that is still live.
INSERT INTO dashboard_sessions (id_hash, key_id, expires_at, client_address)
SELECT %(id_hash)s, id, now() + make_interval(secs => %(seconds)s), %(client_address)s
FROM api_keys WHERE id = %(key_id)s AND revoked_at IS NULL
RETURNING key_id

-- name: find_session
-- The key of a live session: not expired, its key not revoked.
SELECT k.id, k.name, k.scopes
FROM dashboard_sessions s JOIN api_keys k ON k.id = s.key_id
WHERE s.id_hash = %(id_hash)s AND s.expires_at > now() AND k.revoked_at IS NULL

-- name: delete_session
-- Signing out: the session ends everywhere; the id and name of its key, for the record.
DELETE FROM dashboard_sessions s USING api_keys k
WHERE s.id_hash = %(id_hash)s AND k.id = s.key_id
RETURNING k.id, k.name

-- name: list_keys
-- Every key, newest first: names, scopes and use, never a secret or its hash.
SELECT name, scopes, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at DESC

-- name: database_now
-- The database's clock: every relay and API process reckons ticks by this one.
SELECT now()

-- name: lock_schedule_count
-- Creates of schedules take turns until their transactions end, so that the count the next
-- statement makes is one no concurrent create passes. A statement of its own: a statement's
-- snapshot is taken when it starts, before a lock it then waits for is granted.
SELECT pg_advisory_xact_lock(CAST(%(lock_key)s AS bigint))

-- name: insert_schedule
-- A new schedule, unless its name is taken or `max_schedules` schedules exist already (those
-- declared in code count too). Run after lock_schedule_count in the same transaction. Answers
-- the name inserted (NULL when none was), the count before, and whether the name was taken.
WITH counted AS (SELECT count(*) AS schedules FROM schedules),
inserted AS (
    INSERT INTO schedules (name, task, queue, payload, max_attempts, cron, every_seconds, timezone,
                           source, next_run_at)
    SELECT %(name)s, %(task)s, %(queue)s, CAST(%(payload)s AS jsonb), %(max_attempts)s, %(cron)s,
           CAST(%(every_seconds)s AS integer), %(timezone)s, 'api', CAST(%(next_run_at)s AS timestamptz)
    FROM counted WHERE counted.schedules < %(max_schedules)s
    ON CONFLICT (name) DO NOTHING
    RETURNING name
)
SELECT (SELECT name FROM inserted), (SELECT schedules FROM counted),
       EXISTS (SELECT 1 FROM schedules WHERE name = %(name)s)

-- name: upsert_declared_schedules
-- The schedules tasks declare in code, written when a relay starts: a new one is added; a changed
-- one is updated (its next run anew if its timing changed); one an operator made is left alone.
INSERT INTO schedules (name, task, queue, payload, max_attempts, cron, every_seconds, timezone,
                       source, next_run_at)
SELECT t.name, t.task, t.queue, CAST(t.payload AS jsonb), t.max_attempts, t.cron, t.every_seconds,
       t.timezone, 'code', t.next_run_at
FROM unnest(%(names)s::text[], %(tasks)s::text[], %(queues)s::text[], %(payloads)s::text[],
            %(max_attempts)s::integer[], %(crons)s::text[], %(every_seconds)s::integer[],
            %(timezones)s::text[], %(next_runs)s::timestamptz[])
     AS t(name, task, queue, payload, max_attempts, cron, every_seconds, timezone, next_run_at)
ON CONFLICT (name) DO UPDATE SET
    task = EXCLUDED.task, queue = EXCLUDED.queue, payload = EXCLUDED.payload,
    max_attempts = EXCLUDED.max_attempts, cron = EXCLUDED.cron,
    every_seconds = EXCLUDED.every_seconds, timezone = EXCLUDED.timezone, updated_at = now(),
    next_run_at = CASE
        WHEN (schedules.cron, schedules.every_seconds, schedules.timezone)
             IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
        THEN schedules.next_run_at ELSE EXCLUDED.next_run_at END
WHERE schedules.source = 'code'
  AND (schedules.task, schedules.queue, schedules.payload, schedules.max_attempts, schedules.cron,
       schedules.every_seconds, schedules.timezone)
      IS DISTINCT FROM (EXCLUDED.task, EXCLUDED.queue, EXCLUDED.payload, EXCLUDED.max_attempts,
                        EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
RETURNING name

-- name: take_due_schedules
-- Locks due schedules that are not paused, for one relay (SKIP LOCKED: another relay takes
-- others), with the database's clock.
SELECT name, task, queue, payload::text, max_attempts, cron, every_seconds, timezone, next_run_at,
       now()
FROM schedules WHERE NOT paused AND next_run_at <= now()
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: advance_schedules
-- Fired: each schedule's next run, and the tick it fired last (kept when it fired none).
UPDATE schedules s SET next_run_at = t.next_run_at, last_run_at = coalesce(t.last_run_at, s.last_run_at)
FROM unnest(%(names)s::text[], %(next_runs)s::timestamptz[], %(last_runs)s::timestamptz[])
     AS t(name, next_run_at, last_run_at)
WHERE s.name = t.name

-- name: seconds_until_next_tick
-- How long until the next tick of a schedule that is not paused (negative: one is due; NULL: none).
SELECT extract(epoch FROM min(next_run_at) - now()) FROM schedules WHERE NOT paused

-- name: pause_schedule
-- A paused schedule fires nothing until it is resumed.
UPDATE schedules SET paused = true, updated_at = now() WHERE name = %(name)s
RETURNING name

-- name: resume_schedule
-- Paused → firing again from its next tick after now: the ticks it missed while paused never fire.
UPDATE schedules SET next_run_at = CASE WHEN paused THEN %(next_run_at)s ELSE next_run_at END,
       paused = false, updated_at = now()
WHERE name = %(name)s
RETURNING name

-- name: delete_schedule
-- A deleted schedule stops; the jobs it made stay, with its name.
DELETE FROM schedules WHERE name = %(name)s
RETURNING name

-- name: pause_queue
-- A paused queue starts nothing new: the relay holds its jobs back and the claim skips them.
-- Pausing a paused queue changes nothing.
INSERT INTO paused_queues (queue) VALUES (%(queue)s) ON CONFLICT (queue) DO NOTHING

-- name: resume_queue
-- A resumed queue starts its jobs again: the relay is woken to publish those it held back,
-- among them the jobs whose message a worker spent while the queue was paused (hold_back).
WITH resumed AS (
    DELETE FROM paused_queues WHERE queue = %(queue)s RETURNING queue
)
SELECT pg_notify('conveyor_jobs', '') FROM resumed

-- name: insert_webhook
-- A new subscription; its secret is never read back by a listing.
INSERT INTO webhooks (id, url, events, task, secret, created_by)
VALUES (%(id)s, %(url)s, %(events)s, %(task)s, %(secret)s, %(created_by)s)
RETURNING id, url, events, task, created_by, created_at

-- name: list_webhooks
-- Every subscription, oldest first, with how many of its deliveries wait and how many are dead.
SELECT w.id, w.url, w.events, w.task, w.created_by, w.created_at,
    (SELECT count(*) FROM webhook_deliveries AS d WHERE d.webhook_id = w.id AND d.state = 'pending'),
    (SELECT count(*) FROM webhook_deliveries AS d WHERE d.webhook_id = w.id AND d.state = 'dead')
FROM webhooks AS w
WHERE %(id)s::uuid IS NULL OR w.id = %(id)s::uuid
ORDER BY w.created_at, w.id

-- name: delete_webhook
-- A deleted subscription takes its deliveries with it (ON DELETE CASCADE): none is sent again.
DELETE FROM webhooks WHERE id = %(id)s RETURNING url

-- name: fan_out_events
-- One step of the fan-out: the events after the mark, below the horizon (`event_horizon()`,
-- proved exact in migration 0015: no transaction that could still write an event sorting
-- before them is open), become one delivery per
-- matching subscription, and the mark moves past them, in this one statement. Skipped (zero
-- rows in `mark`) while another relay holds the mark. A subscription gets the events made
-- after it; `data` is the job as it is now, with the state and attempt of the event.
WITH mark AS (
    SELECT xid, event_id FROM webhook_fanout WHERE name = 'events' FOR UPDATE SKIP LOCKED
), horizon AS (
    SELECT event_horizon() AS h
), batch AS (
    SELECT e.id, e.xid, e.at, e.job_id, e.task, e.queue, e.state, e.attempt
    FROM mark, horizon, job_events AS e
    WHERE (e.xid, e.id) > (mark.xid, mark.event_id) AND e.xid < horizon.h
      AND EXISTS (SELECT 1 FROM webhooks)
    ORDER BY e.xid, e.id
    LIMIT %(limit)s
), made AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, job_id, event_at, data)
    SELECT w.id, b.xid::text || '-' || b.id::text, 'job.' || b.state, b.job_id, b.at,
        jsonb_build_object(
            'id', b.job_id, 'task', b.task, 'queue', b.queue, 'state', b.state,
            'attempts', b.attempt, 'run', j.run, 'max_attempts', j.max_attempts,
            'priority', j.priority, 'progress', j.progress, 'payload', j.payload,
            'created_at', j.created_at, 'started_at', j.started_at, 'finished_at', j.finished_at,
            'next_retry_at', CASE WHEN b.state = 'retrying' THEN j.available_at END,
            'last_error', j.last_error, 'result', j.result, 'parent_id', j.parent_id,
            'schedule', j.schedule, 'scheduled_for', j.scheduled_for
        )
    FROM batch AS b
    JOIN webhooks AS w
        ON 'job.' || b.state = ANY (w.events) AND (w.task IS NULL OR w.task = b.task)
        AND b.at >= w.created_at
    LEFT JOIN jobs AS j ON j.id = b.job_id
    ON CONFLICT (webhook_id, event_id) DO NOTHING
    RETURNING 1
), newest AS (
    (SELECT xid, id FROM batch ORDER BY xid DESC, id DESC LIMIT 1)
    UNION ALL
    -- No subscription: nothing is read, the mark jumps to the last event below the horizon
    -- (a subscription made later gets only the events made after it).
    (SELECT e.xid, e.id FROM mark, horizon, job_events AS e
     WHERE NOT EXISTS (SELECT 1 FROM webhooks) AND e.xid < horizon.h
       AND (e.xid, e.id) > (mark.xid, mark.event_id)
     ORDER BY e.xid DESC, e.id DESC LIMIT 1)
), moved AS (
    UPDATE webhook_fanout AS f SET xid = newest.xid, event_id = newest.id, updated_at = now()
    FROM newest WHERE f.name = 'events'
    RETURNING 1
)
SELECT (SELECT count(*) FROM mark), (SELECT count(*) FROM batch), (SELECT count(*) FROM made),
    (SELECT count(*) FROM moved)

-- name: take_deliveries
-- Up to %(limit)s due deliveries, leased: the attempt is counted now and the row is not due again
-- until %(lease)s seconds have passed (a sender that dies mid-request leaves it to another).
UPDATE webhook_deliveries AS d
SET attempts = d.attempts + 1, last_attempt_at = now(),
    next_attempt_at = now() + make_interval(secs => %(lease)s)
FROM webhooks AS w
WHERE w.id = d.webhook_id AND d.id = ANY(ARRAY(
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
    ORDER BY next_attempt_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING d.id, d.webhook_id, w.url, w.secret, d.event_id, d.event_type, d.event_at, d.data, d.attempts

-- name: finish_deliveries
-- What attempts came to, many in one statement: delivered, pending again (due in `retry_in`
-- seconds) or dead. Fenced by the attempt: a sender whose lease ran out writes nothing. The
-- ids written.
UPDATE webhook_deliveries AS d
SET state = o.state, last_status = o.status, last_error = o.error,
    next_attempt_at = now() + make_interval(secs => o.retry_in),
    delivered_at = CASE WHEN o.state = 'delivered' THEN now() ELSE d.delivered_at END,
    finished_at = CASE WHEN o.state = 'pending' THEN NULL ELSE now() END
FROM unnest(
    %(ids)s::bigint[], %(attempts)s::int[], %(states)s::text[], %(statuses)s::int[],
    %(errors)s::text[], %(retry_in)s::float8[]
) AS o(id, attempt, state, status, error, retry_in)
WHERE d.id = o.id AND d.attempts = o.attempt AND d.state = 'pending'
RETURNING d.id

-- name: replay_delivery
-- A dead (or delivered) delivery is due again at once, its attempts counted from 0; its last
-- status and error stay until the next attempt.
UPDATE webhook_deliveries
SET state = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL
WHERE id = %(id)s AND webhook_id = %(webhook_id)s AND state IN ('dead', 'delivered')
RETURNING id

-- name: delivery_state
SELECT state FROM webhook_deliveries WHERE id = %(id)s AND webhook_id = %(webhook_id)s

-- name: deliveries_page
-- A subscription's deliveries newest first, of one state when given, before the id %(before)s.
SELECT id, webhook_id, event_id, event_type, job_id, event_at, state, attempts, last_status,
    last_error, last_attempt_at, next_attempt_at, delivered_at, created_at
FROM webhook_deliveries
WHERE webhook_id = %(webhook_id)s
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s

-- name: failed_deliveries
-- The deliveries that failed lately (dead, or pending after a failed attempt), newest first.
SELECT d.id, d.webhook_id, w.url, d.event_id, d.event_type, d.job_id, d.state, d.attempts,
    d.last_status, d.last_error, d.last_attempt_at, d.next_attempt_at
FROM webhook_deliveries AS d JOIN webhooks AS w ON w.id = d.webhook_id
WHERE d.state = 'dead' OR (d.state = 'pending' AND d.last_error IS NOT NULL)
ORDER BY d.id DESC
LIMIT %(limit)s

-- name: prune_deliveries
-- Deletes up to %(limit)s deliveries of a finished %(state)s older than %(retain)s seconds.
DELETE FROM webhook_deliveries WHERE id = ANY(ARRAY(
    SELECT id FROM webhook_deliveries
    WHERE state = %(state)s AND finished_at < now() - make_interval(secs => %(retain)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))

-- name: insert_audit_entry
-- Who did what: one operator action (or sign-in, sign-out), written in the action's own
-- transaction, so it stands in the log exactly when the action took effect.
INSERT INTO audit_log (key_id, key_name, action, target, count, request_id, client_address, detail)
VALUES (%(key_id)s, %(key_name)s, %(action)s, %(target)s, %(count)s, %(request_id)s,
        %(client_address)s, CAST(%(detail)s AS jsonb))
RETURNING id

-- name: audit_page
-- Audit entries newest first, before the entry %(before)s (NULL: from the newest), of one action
-- and one key name when given: the (action, id) and (key_name, id) indexes, or the primary key.
SELECT id, at, key_id, key_name, action, target, count, request_id, client_address, detail::text
FROM audit_log
WHERE (%(action)s::text IS NULL OR action = %(action)s)
  AND (%(key_name)s::text IS NULL OR key_name = %(key_name)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: prune_audit_log
-- Deletes up to %(limit)s audit entries older than %(retain)s seconds, oldest first (ids as an
-- array: each row found by its primary key).
DELETE FROM audit_log WHERE id = ANY(ARRAY(
    SELECT id FROM audit_log WHERE at < now() - make_interval(secs => %(retain)s)
    ORDER BY at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))

-- name: count_prunable_audit
-- How many audit entries are past their retention (what a pass would delete).
SELECT count(*) FROM audit_log WHERE at < now() - make_interval(secs => %(retain)s)

-- name: prune_jobs
-- Deletes up to %(limit)s jobs of one finished state whose finished_at is older than its
-- retention, oldest first, with their attempts and artifacts (ON DELETE CASCADE); never an
-- unfinished job, nor a workflow's step (prune_workflows prunes those with their workflow).
-- With %(record_stale)s, a pruned dead job's copy in <queue>.XQ is recorded as stale for the
-- relay's clean-up pass. The ids go to the DELETE as an array, so each row is
-- found by its primary key (a join could hash the whole table).
WITH pruned AS (
    DELETE FROM jobs WHERE id = ANY(ARRAY(
        SELECT id FROM jobs
        WHERE state = %(state)s AND state IN ('succeeded', 'dead', 'cancelled')
          AND finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => %(retain)s)
          AND workflow_id IS NULL
        ORDER BY finished_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING id, state, queue, run, published_at
), stale AS (
    INSERT INTO stale_dead_letters (queue, job_id, run)
    SELECT queue, id, run FROM pruned
    WHERE %(record_stale)s AND state = 'dead' AND published_at IS NOT NULL
)
SELECT count(*) FROM pruned

-- name: count_prunable
-- How many jobs of one finished state are past their retention (what a pass would delete).
SELECT count(*) FROM jobs
WHERE state = %(state)s AND finished_at IS NOT NULL
  AND finished_at < now() - make_interval(secs => %(retain)s)
  AND workflow_id IS NULL

-- name: release_expired_idempotency_keys
-- Frees up to %(limit)s idempotency keys whose window has passed, oldest first (ids as an array:
-- each row found by its primary key).
UPDATE jobs SET idempotency_key = NULL
WHERE id = ANY(ARRAY(
    SELECT id FROM jobs
    WHERE idempotency_key IS NOT NULL AND created_at < now() - make_interval(secs => %(ttl)s)
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))

-- name: prune_workers
-- Forgets workers whose last heartbeat is older than %(retain)s seconds (stopped or silent).
DELETE FROM workers WHERE last_seen < now() - make_interval(secs => %(retain)s)

-- name: prune_relays
-- Forgets relays whose last heartbeat is older than %(retain)s seconds (stopped or silent).
DELETE FROM relays WHERE last_seen < now() - make_interval(secs => %(retain)s)

-- name: prune_sessions
-- Deletes up to %(limit)s expired dashboard sessions, oldest first.
DELETE FROM dashboard_sessions WHERE id_hash = ANY(ARRAY(
    SELECT id_hash FROM dashboard_sessions WHERE expires_at <= now()
    ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED
))

-- name: read_events
-- The events after the cursor (%(after_xid)s, %(after_id)s) in (xid, id) order that no open
-- transaction can still precede: xid below `event_horizon()` of this statement's own snapshot
-- (the smallest xid it sees in progress of a transaction that may write events, else its xmax;
-- migration 0015 defines it and proves it exact). Filters are NULL for any. Every row carries the
-- horizon and whether events are held above it; a row with a NULL id says there is no event to
-- read. With %(jobs)s, each event also carries its job's row as this same snapshot sees it (NULL
-- once pruned), for the job views the followers send: no second read. Run as a transaction of
-- its own.
WITH horizon AS (
    SELECT event_horizon() AS h
), held AS (
    -- Whether events it sees are held back above the horizon (a reader then looks again soon:
    -- the transaction holding them may end without an event, and so without a wake).
    SELECT EXISTS (SELECT 1 FROM job_events e, horizon h WHERE e.xid >= h.h
                   AND (e.xid, e.id) > (CAST(%(after_xid)s AS xid8), CAST(%(after_id)s AS bigint))) AS held
)
SELECT h.h::text, e.xid::text, e.id, e.at, e.job_id, e.task, e.queue, e.client_id, e.workflow,
       e.state, e.attempt, held.held,
       j.id, j.task, j.queue, j.state, j.priority, j.run, j.attempts, j.max_attempts, j.progress,
       j.payload, j.created_at, j.updated_at, j.available_at, j.started_at, j.finished_at,
       j.last_error, j.result, j.worker_id, j.client_id, j.parent_id, j.schedule, j.scheduled_for,
       j.cancel_requested_at, j.unique_key, j.workflow_id, j.step
FROM held, horizon h LEFT JOIN LATERAL (
    -- An event's workflow is its job's (a step's events are written by statements that do not
    -- read it): looked up here, once per event read.
    SELECT e.*, coalesce(e.workflow_id, (SELECT j.workflow_id FROM jobs j WHERE j.id = e.job_id))
           AS workflow
    FROM job_events e
    WHERE (e.xid, e.id) > (CAST(%(after_xid)s AS xid8), CAST(%(after_id)s AS bigint)) AND e.xid < h.h
      AND (%(task)s::text IS NULL OR e.task = %(task)s)
      AND (%(job_id)s::uuid IS NULL OR e.job_id = %(job_id)s)
      AND (%(workflow_id)s::uuid IS NULL OR coalesce(
               e.workflow_id, (SELECT j.workflow_id FROM jobs j WHERE j.id = e.job_id)) = %(workflow_id)s)
      AND (%(client_id)s::text IS NULL OR e.client_id = %(client_id)s)
    ORDER BY e.xid, e.id
    LIMIT %(limit)s
) e ON true
LEFT JOIN jobs j ON %(jobs)s AND j.id = e.job_id
ORDER BY e.xid, e.id

-- name: event_exists
-- Whether the event a cursor names is still in the log (a pruned one: the stream answers 410).
SELECT EXISTS (SELECT 1 FROM job_events WHERE xid = CAST(%(xid)s AS xid8) AND id = %(id)s)

-- name: prune_events
-- Deletes up to %(limit)s of the log's first events in (xid, id) order, stopping before the first
-- one younger than %(retain)s seconds: what is kept is always everything after some event, so a
-- cursor whose event is kept has every later event kept too (and one whose event is gone: 410).
WITH head AS (
    SELECT id, xid, at FROM job_events ORDER BY xid, id LIMIT %(limit)s
), young AS (
    SELECT xid, id FROM head WHERE at >= now() - make_interval(secs => %(retain)s)
    ORDER BY xid, id LIMIT 1
)
DELETE FROM job_events WHERE id = ANY(ARRAY(
    SELECT h.id FROM head h WHERE NOT EXISTS (SELECT 1 FROM young y WHERE (h.xid, h.id) >= (y.xid, y.id))
))

-- name: count_prunable_events
-- How many events are past their retention (about what a pass would delete).
SELECT count(*) FROM job_events WHERE at < now() - make_interval(secs => %(retain)s)

-- name: insert_workflow
-- A workflow and every one of its steps, in one statement in the caller's transaction: a step
-- with upstream steps is `waiting` with their count, the others `queued`; the relay is woken when
-- the transaction commits. The first step, the anchor, holds the workflow's idempotency key (and
-- the fingerprint of the request) when it has one, as a keyed job holds its own: when the key is
-- taken the anchor is not inserted, and then neither is anything else (the workflow hangs on the
-- anchor's RETURNING, the other steps on the workflow's). The workflow starts `running`, every
-- step unfinished (a trigger keeps its state from then on: 0016). Answers how many steps were
-- inserted.
WITH given AS (
    SELECT * FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb))
         AS t(id uuid, task text, queue text, payload jsonb, priority smallint, max_attempts integer,
              client_id text, parent_id uuid, concurrency_key text, concurrency_limit integer,
              rate_key text, rate_limit integer, rate_period float8, step text, after_steps text[],
              downstream uuid[], upstream_left integer, is_anchor boolean)
), anchor AS (
    INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, client_id, parent_id,
                      concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period,
                      workflow_id, step, after_steps, downstream, upstream_left, idempotency_key,
                      request_hash)
    SELECT g.id, g.task, g.queue, g.payload,
           CASE WHEN g.upstream_left > 0 THEN 'waiting' ELSE 'queued' END, g.priority,
           g.max_attempts, g.client_id, g.parent_id, g.concurrency_key, g.concurrency_limit,
           g.rate_key, g.rate_limit, g.rate_period, %(id)s, g.step, g.after_steps, g.downstream,
           g.upstream_left, %(idempotency_key)s, %(request_hash)s
    FROM given g WHERE g.is_anchor
    ON CONFLICT DO NOTHING
    RETURNING id, task, queue, client_id, state
), workflow AS (
    INSERT INTO workflows (id, name, client_id, steps, unfinished)
    SELECT %(id)s, %(name)s, %(client_id)s, %(steps)s, %(steps)s FROM anchor
    RETURNING id
), inserted AS (
    INSERT INTO jobs (id, task, queue, payload, state, priority, max_attempts, client_id, parent_id,
                      concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period,
                      workflow_id, step, after_steps, downstream, upstream_left)
    SELECT g.id, g.task, g.queue, g.payload,
           CASE WHEN g.upstream_left > 0 THEN 'waiting' ELSE 'queued' END, g.priority,
           g.max_attempts, g.client_id, g.parent_id, g.concurrency_key, g.concurrency_limit,
           g.rate_key, g.rate_limit, g.rate_period, w.id, g.step, g.after_steps, g.downstream,
           g.upstream_left
    FROM workflow w, given g WHERE NOT g.is_anchor
    RETURNING id, task, queue, client_id, state
), every AS (
    SELECT * FROM anchor UNION ALL SELECT * FROM inserted
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, state, 0 FROM every WHERE pg_notify('conveyor_events', '')::text = ''
)
SELECT count(*), CASE WHEN count(*) > 0 THEN pg_notify('conveyor_jobs', '')::text END FROM every

-- name: workflow_of_key
-- The workflow whose anchor step is this job (found by its idempotency key): its name, its state
-- and each step's job id.
SELECT w.id, w.name, w.state, j.step, j.id FROM jobs a
JOIN workflows w ON w.id = a.workflow_id
JOIN jobs j ON j.workflow_id = w.id
WHERE a.id = %(id)s

-- name: cancel_workflow
-- A workflow's steps that have not started (waiting, queued, retrying) → cancelled, `workflow
-- cancelled` their reason (no `upstream ` in it: a replay brings none of them back), locked in
-- id order. A step with limits whose message was out frees its slot, as `cancel` does.
WITH chosen AS (
    SELECT id FROM jobs
    WHERE workflow_id = %(id)s AND state IN ('queued', 'retrying', 'waiting')
    ORDER BY id FOR UPDATE
), done AS (
    UPDATE jobs j SET state = 'cancelled', last_error = 'workflow cancelled', finished_at = now(),
           updated_at = now()
    FROM chosen c WHERE j.id = c.id AND j.state IN ('queued', 'retrying', 'waiting')
    RETURNING j.id, j.task, j.queue, j.client_id, j.attempts,
              j.published_at IS NOT NULL AND (j.concurrency_key IS NOT NULL OR j.rate_key IS NOT NULL)
              AS held_slot
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'cancelled', attempts FROM done WHERE pg_notify('conveyor_events', '')::text = ''
)
SELECT id, CASE WHEN held_slot THEN pg_notify('conveyor_jobs', 'slot')::text END FROM done

-- name: request_cancel_workflow
-- Asks every running step of a workflow to stop, as request_cancel asks one job.
WITH asked AS (
    UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
    WHERE workflow_id = %(id)s AND state = 'running'
    RETURNING id
)
SELECT id, pg_notify('conveyor_cancel', id::text) FROM asked

-- name: cancel_downstream
-- The steps after these jobs, for those that ended dead or cancelled, transitively: waiting →
-- cancelled, the reason naming the step that failed (`upstream <step> dead`; the first by name
-- when several did). Run in the transaction that ended them. The reason's `upstream ` marks a
-- step cancelled for its upstream: revive_downstream brings back only those.
WITH RECURSIVE failed AS (
    SELECT id, step, state, downstream FROM jobs
    WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('dead', 'cancelled') AND downstream IS NOT NULL
), reached (id, cause) AS (
    SELECT d.id, 'upstream ' || f.step || ' ' || f.state FROM failed f, unnest(f.downstream) AS d(id)
    UNION
    SELECT d.id, r.cause FROM reached r JOIN jobs j ON j.id = r.id, unnest(j.downstream) AS d(id)
), cancelled AS (
    UPDATE jobs j SET state = 'cancelled', last_error = c.cause, finished_at = now(), updated_at = now()
    FROM (SELECT DISTINCT ON (id) id, cause FROM reached ORDER BY id, cause) AS c
    WHERE j.id = c.id AND j.state = 'waiting'
    RETURNING j.id, j.task, j.queue, j.client_id, j.attempts, j.workflow_id
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'cancelled', attempts FROM cancelled WHERE pg_notify('conveyor_events', '')::text = ''
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM cancelled)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT id FROM cancelled WHERE (SELECT count(*) FROM held) >= 0

-- name: revive_downstream
-- After dead steps were replayed (queued again, in this transaction): the steps after them that
-- were cancelled for an upstream step (never started), transitively, wait again, each counting
-- its upstream steps that have not succeeded. Answers their workflows, whose other failed steps
-- the caller then passes to cancel_downstream (what those still block is cancelled again).
-- The count is read in this statement's snapshot: an upstream success committing meanwhile
-- can leave it one too high, which settle_waiting_steps mends.
WITH RECURSIVE reached (id) AS (
    SELECT d.id FROM jobs r, unnest(r.downstream) AS d(id)
    WHERE r.id = ANY(%(ids)s::uuid[]) AND r.state = 'queued'
    UNION
    SELECT d.id FROM reached x JOIN jobs j ON j.id = x.id, unnest(j.downstream) AS d(id)
    WHERE j.state = 'cancelled' AND j.attempts = 0 AND left(j.last_error, 9) = 'upstream '
), counted AS (
    SELECT j.id, (SELECT count(*) FROM jobs u
                  WHERE u.workflow_id = j.workflow_id AND u.step = ANY(j.after_steps)
                    AND u.state <> 'succeeded') AS waits_for
    FROM (SELECT DISTINCT id FROM reached) AS x JOIN jobs j ON j.id = x.id
    WHERE j.state = 'cancelled' AND j.attempts = 0 AND left(j.last_error, 9) = 'upstream '
), revived AS (
    UPDATE jobs j SET state = 'waiting', upstream_left = c.waits_for, finished_at = NULL,
           last_error = NULL, updated_at = now()
    FROM counted c WHERE j.id = c.id AND j.state = 'cancelled'
    RETURNING j.id, j.workflow_id, j.task, j.queue, j.client_id, j.attempts
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'waiting', attempts FROM revived WHERE pg_notify('conveyor_events', '')::text = ''
), held AS (
    -- The workflows of the steps that moved, locked in id order once every job row is (see succeed).
    SELECT w.id FROM workflows w WHERE w.id IN (SELECT workflow_id FROM revived)
    ORDER BY w.id FOR NO KEY UPDATE
)
SELECT workflow_id FROM revived WHERE (SELECT count(*) FROM held) >= 0

-- name: failed_steps
-- The steps of these workflows that failed by themselves (dead, or cancelled but not for an
-- upstream step): what keeps the steps after them from running.
SELECT id FROM jobs
WHERE workflow_id = ANY(%(workflows)s::uuid[]) AND state IN ('dead', 'cancelled')
  AND (attempts > 0 OR last_error IS NULL OR left(last_error, 9) <> 'upstream ')

-- name: settle_waiting_steps
-- The relay's safety net: a step waiting for longer than %(age)s seconds whose upstream steps
-- have all succeeded (a revival that raced a success counted one too many) is queued; wakes
-- the relay.
WITH ready AS (
    SELECT d.id FROM jobs d
    WHERE d.state = 'waiting' AND d.updated_at < now() - make_interval(secs => %(age)s)
      AND NOT EXISTS (SELECT 1 FROM jobs u
                      WHERE u.workflow_id = d.workflow_id AND u.step = ANY(d.after_steps)
                        AND u.state <> 'succeeded')
    ORDER BY d.updated_at LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), queued AS (
    UPDATE jobs j SET state = 'queued', upstream_left = 0, available_at = now(), updated_at = now()
    FROM ready WHERE j.id = ready.id AND j.state = 'waiting'
    RETURNING j.id, j.task, j.queue, j.client_id, j.attempts
), logged AS (
    INSERT INTO job_events (job_id, task, queue, client_id, state, attempt)
    SELECT id, task, queue, client_id, 'queued', attempts FROM queued WHERE pg_notify('conveyor_events', '')::text = ''
)
SELECT id, pg_notify('conveyor_jobs', '') FROM queued

-- name: upstream_results
-- What the steps a step comes after returned: (step, result as JSON text, state).
SELECT u.step, u.result::text, u.state FROM jobs d
JOIN jobs u ON u.workflow_id = d.workflow_id AND u.step = ANY(d.after_steps)
WHERE d.id = %(id)s

-- name: prune_workflows
-- Deletes up to %(limit)s finished workflows past their retention, oldest first, with their steps
-- (and the steps' attempts and artifacts): a step is never pruned alone while its workflow lives.
-- Read from the workflow's stored state (0016), not its steps: a succeeded one is kept as a
-- succeeded job is, from when its last step finished; a failed one as long as the longest of
-- the three retentions, so that each of its steps, which all finished by then, is past its own
-- state's. The state is read again once the row is locked (a replay may have made it run again).
-- With %(record_stale)s, a pruned dead step's copy in <queue>.XQ is recorded as stale, as
-- prune_jobs does.
WITH chosen AS (
    SELECT w.id FROM workflows w
    WHERE (w.state = 'succeeded'
           AND w.finished_at < now() - make_interval(secs => %(retain_succeeded)s))
       OR (w.state = 'failed'
           AND w.finished_at < now() - make_interval(secs => greatest(
                   %(retain_succeeded)s, %(retain_dead)s, %(retain_cancelled)s)))
    ORDER BY w.created_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM jobs j USING chosen c WHERE j.workflow_id = c.id
    RETURNING j.id, j.state, j.queue, j.run, j.published_at
), stale AS (
    INSERT INTO stale_dead_letters (queue, job_id, run)
    SELECT queue, id, run FROM steps
    WHERE %(record_stale)s AND state = 'dead' AND published_at IS NOT NULL
), pruned AS (
    DELETE FROM workflows w USING chosen c WHERE w.id = c.id RETURNING w.id
)
SELECT count(*), (SELECT count(*) FROM steps) FROM pruned
