-- Foundation schema. Every rule that a bad client or a racing writer could break is a constraint here,
-- not only a check in application code.
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    avatar_url  text,
    time_zone   text NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    CONSTRAINT users_email_format CHECK (position('@' IN email) > 1)
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE calendars (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES users (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text CHECK (length(description) <= 10000),
    time_zone   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     bigint NOT NULL DEFAULT 1 CHECK (version > 0)
);
CREATE INDEX calendars_owner_idx ON calendars (owner_id);

CREATE TABLE calendar_members (
    calendar_id bigint NOT NULL REFERENCES calendars (id) ON DELETE CASCADE,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text NOT NULL CHECK (role IN ('owner', 'writer', 'reader', 'free_busy')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (calendar_id, user_id)
);
-- "which calendars may this user see": index-only.
CREATE INDEX calendar_members_user_idx ON calendar_members (user_id) INCLUDE (calendar_id, role);
-- A calendar has exactly one owner row (the application writes it with the calendar).
CREATE UNIQUE INDEX calendar_members_one_owner ON calendar_members (calendar_id) WHERE role = 'owner';

CREATE TABLE events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    calendar_id         bigint NOT NULL REFERENCES calendars (id) ON DELETE CASCADE,
    organizer_id        bigint NOT NULL REFERENCES users (id),
    title               text NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    description         text CHECK (length(description) <= 20000),
    location            text CHECK (length(location) <= 500),
    start_time          timestamptz NOT NULL,
    end_time            timestamptz NOT NULL,
    time_zone           text NOT NULL,
    all_day             boolean NOT NULL DEFAULT false,
    status              text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'tentative', 'cancelled')),
    transparency        text NOT NULL DEFAULT 'busy' CHECK (transparency IN ('busy', 'free')),
    rrule               text CHECK (length(rrule) <= 1000),
    exdates             timestamptz[] NOT NULL DEFAULT '{}',
    recurring_event_id  bigint REFERENCES events (id),
    original_start_time timestamptz,
    version             bigint NOT NULL DEFAULT 1 CHECK (version > 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    CONSTRAINT events_time_order CHECK (end_time > start_time),
    -- Bounded duration lets the window query use a plain btree range on start_time.
    CONSTRAINT events_max_duration CHECK (end_time - start_time <= interval '31 days'),
    CONSTRAINT events_override_pair CHECK ((recurring_event_id IS NULL) = (original_start_time IS NULL)),
    CONSTRAINT events_override_not_series CHECK (rrule IS NULL OR recurring_event_id IS NULL)
);
-- The month view: live events of one calendar by start time. end_time and id ride along so the
-- overlap filter and keyset ordering need no heap visit.
CREATE INDEX events_calendar_start_idx ON events (calendar_id, start_time)
    INCLUDE (end_time, id) WHERE deleted_at IS NULL;
-- Free/busy of an organizer.
CREATE INDEX events_organizer_start_idx ON events (organizer_id, start_time)
    INCLUDE (end_time, status, transparency) WHERE deleted_at IS NULL;
-- One override per instance of a series.
CREATE UNIQUE INDEX events_override_key ON events (recurring_event_id, original_start_time)
    WHERE recurring_event_id IS NOT NULL;

CREATE TABLE attendees (
    event_id        bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    user_id         bigint NOT NULL REFERENCES users (id),
    email           text,
    name            text,
    response_status text NOT NULL DEFAULT 'needs_action'
                    CHECK (response_status IN ('needs_action', 'accepted', 'declined', 'tentative')),
    is_optional     boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, user_id)
);
-- Attendees of a batch of events: what the month view reads, index-only.
CREATE INDEX attendees_event_idx ON attendees (event_id) INCLUDE (user_id, response_status, is_optional);
-- Free/busy of an attendee.
CREATE INDEX attendees_user_idx ON attendees (user_id) INCLUDE (event_id, response_status);

CREATE TABLE resources (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind       text NOT NULL CHECK (kind IN ('room', 'equipment')),
    capacity   integer CHECK (capacity >= 0),
    location   text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    resource_id bigint NOT NULL REFERENCES resources (id),
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT reservations_time_order CHECK (end_time > start_time),
    -- Double booking is impossible whatever the application does.
    CONSTRAINT reservations_no_overlap EXCLUDE USING gist (
        resource_id WITH =,
        tstzrange(start_time, end_time, '[)') WITH &&
    ) WHERE (status = 'confirmed')
);
CREATE INDEX reservations_event_idx ON reservations (event_id);
CREATE INDEX reservations_resource_time_idx ON reservations (resource_id, start_time, end_time)
    WHERE status = 'confirmed';

-- Change events, written in the same transaction as the change they describe.
CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type text NOT NULL,
    aggregate_id   bigint NOT NULL,
    event_type     text NOT NULL,
    payload        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
