-- Reference consumer, first layout. Applied once, in one transaction, by `viva-relay consume --migrate`
-- (and by consume_rows at start). See docs/consumer.md for what each table holds. Everything lives in the
-- schema viva_relay, which the migration runner creates.

-- One row per drop seen on the queue.
CREATE TABLE viva_relay.drops (
    drop_id        text PRIMARY KEY,
    tenant         text NOT NULL,
    table_name     text NOT NULL,
    run_id         text,
    extraction_id  text,
    -- receiving: rows arriving; complete: the complete message arrived, seqs may be missing;
    -- published: visible in the dataset's table; failed: discarded (a reprocess reopens it).
    status         text NOT NULL DEFAULT 'receiving'
                   CHECK (status IN ('receiving', 'complete', 'published', 'failed')),
    rows           bigint,
    messages       integer,
    attempt        integer NOT NULL DEFAULT 1,
    request_start  timestamptz,
    request_end    timestamptz,
    reason         text,
    received_at    timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    published_at   timestamptz
);
CREATE INDEX drops_pending ON viva_relay.drops (status) WHERE status = 'complete';

-- Rows messages of drops not yet published, each kept whole as the JSON text received (its rows are
-- parsed once, when the drop is published): the primary key makes each (drop, seq) count once.
CREATE TABLE viva_relay.staging (
    drop_id    text NOT NULL REFERENCES viva_relay.drops (drop_id),
    seq        integer NOT NULL CHECK (seq >= 0),
    first_row  bigint NOT NULL,
    row_count  integer NOT NULL,
    sample     jsonb NOT NULL,  -- the message's first row: which keys carry numbers or booleans
    message    text NOT NULL,
    PRIMARY KEY (drop_id, seq)
);
-- A message is up to ~250 KB read once at publish: storing it uncompressed saves compressing it on
-- the way in and decompressing it on the way out.
ALTER TABLE viva_relay.staging ALTER COLUMN message SET STORAGE EXTERNAL;

-- One published table per dataset (created on first publish), and the typed columns it has.
CREATE TABLE viva_relay.datasets (
    table_name      text PRIMARY KEY,
    published_table text NOT NULL UNIQUE
);
CREATE TABLE viva_relay.dataset_columns (
    table_name  text NOT NULL REFERENCES viva_relay.datasets (table_name),
    json_key    text NOT NULL,
    column_name text NOT NULL,
    sql_type    text NOT NULL CHECK (sql_type IN ('double precision', 'boolean')),
    PRIMARY KEY (table_name, json_key),
    UNIQUE (table_name, column_name)
);

-- Messages that could not be used, with the reason and the text as received.
CREATE TABLE viva_relay.poison (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL,
    drop_id     text,
    seq         integer,
    raw         text NOT NULL
);
