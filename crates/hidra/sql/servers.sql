-- Hidra server registry: the PostgreSQL servers tenants may live on, besides
-- the control server (the database Hidra connects to, not listed here). The
-- application owns this table: `Hidra::install()` (or `hidra init`) creates it,
-- or run this from your migrations. Safe to run more than once.
CREATE TABLE IF NOT EXISTS "public"."hidra_servers" (
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    capacity INTEGER,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT "hidra_servers_pkey" PRIMARY KEY (name),
    CONSTRAINT "hidra_servers_name_check" CHECK (name ~ '^[a-z][a-z0-9_-]{0,49}$'),
    CONSTRAINT "hidra_servers_state_check" CHECK (state IN ('active', 'draining', 'read_only')),
    CONSTRAINT "hidra_servers_capacity_check" CHECK (capacity IS NULL OR capacity >= 0)
);
-- A removed server keeps its row (and its name, never reused).
ALTER TABLE "public"."hidra_servers" ADD COLUMN IF NOT EXISTS removed_at TIMESTAMPTZ;
