"""The event log's horizon, written once: `event_horizon()`, used by every reader of the log.

Readers follow `job_events` by (xid, id) and read only below the horizon:

    WHERE (xid, id) > cursor AND xid < event_horizon() ORDER BY xid, id

(`read_events`, `fan_out_events` in app/ledger/queries.sql; app/ledger/events.py says why by
(xid, id): ids are handed out at insert, not at commit.)

Why it is exact. Let S be the snapshot of the reading statement and H the horizon it gets.
The function is STABLE, so it runs in the calling statement's snapshot: its
`pg_current_snapshot()` is S itself (a VOLATILE one would take a fresh snapshot, newer than the
one the caller reads the log in, and could pass an event the caller does not see). Run the
read as a transaction of its own.

1. Every transaction that was running when S was taken and has an xid is in S's in-progress
   list (xip), and every xid below S's xmax that is not in xip has ended. A transaction that
   gets its xid later gets one >= xmax, since xids are handed out in increasing order.
2. With H = the least of xip and xmax (`pg_snapshot_xmin(S)`): every transaction with an xid
   below H has ended, so the events below H that S sees are all the events below H there will
   ever be. A reader that returns them in (xid, id) order and moves its cursor to the last one
   can never later meet an event with a smaller key: one would need an xid below H.
3. An xid of xip may be passed over (left out of the least) when its transaction can never
   write an event: H then waits only for transactions that can. Two kinds are passed over, both
   known from the `pg_stat_activity` entry whose current xid (`backend_xid`) it is:
   a. A backend connected to another database: xids are cluster-wide, so a long transaction
      elsewhere (a parallel test's, a batch job's) would hold H back although it can never write
      this log.
   b. A backend whose `application_name` is `conveyor-publish`: the relay's publishing
      connection, which takes and marks jobs and holds its transaction open until the broker
      confirms them, and never writes an event. A trigger on `job_events` refuses any insert made
      under that name, so a transaction that shows it has written no event (the name is set when
      the connection is made and never changed by a `SET` inside a transaction; a connection
      that writes events must never be given it).
   Reading the entry is exact: a backend stays in one database and one status slot for its life;
   PostgreSQL reads a slot's status entry before the slot's xid; the xid is in xip, so its
   backend held the slot since before S, and the status read comes after S (a statement's
   snapshot is taken before it runs, and the status copy is per transaction). So the entry read
   is that very backend's, with its database and its name. An xid that is not shown (a prepared
   transaction, a status read that missed it) is kept: that only holds H back, never lets it
   pass a writer. (Events with an xid between H and xmax that S sees are read by a later call;
   nothing is lost by waiting.)

What holds the horizon: a transaction of this database that has an xid and stays open (a job's
own `job.transaction()`, an export writing its chunks) delays every event behind it until it
ends, not only its own. Keep transactions that write the ledger short.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels = None
depends_on = None

# The relay's publishing connection (app/relay/outbox.py); passed over by the horizon (3b).
PUBLISH_APPLICATION_NAME = "conveyor-publish"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION event_horizon() RETURNS xid8 LANGUAGE sql STABLE AS $$
            WITH snapshot AS (
                SELECT pg_current_snapshot() AS s
            ), passed AS (
                SELECT a.backend_xid AS x FROM pg_stat_activity a
                WHERE a.backend_xid IS NOT NULL AND a.datid IS NOT NULL
                  AND (a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
                       OR a.application_name = '{PUBLISH_APPLICATION_NAME}')
            )
            SELECT coalesce(
                (SELECT min(x) FROM snapshot, pg_snapshot_xip(snapshot.s) AS x
                 WHERE xid(x) NOT IN (SELECT x FROM passed)),
                (SELECT pg_snapshot_xmax(s) FROM snapshot))
        $$
        """
    )
    op.execute(
        f"""
        CREATE FUNCTION job_events_not_from_publisher() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('application_name') = '{PUBLISH_APPLICATION_NAME}' THEN
                RAISE EXCEPTION 'a connection named {PUBLISH_APPLICATION_NAME} writes no events: '
                    'the event horizon passes over its transactions';
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER job_events_not_from_publisher BEFORE INSERT ON job_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION job_events_not_from_publisher()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER job_events_not_from_publisher ON job_events")
    op.execute("DROP FUNCTION job_events_not_from_publisher()")
    op.execute("DROP FUNCTION event_horizon()")
