-- Hidra tenant registry. The application owns this table: run this on purpose
-- (from your migrations or `hidra init`). Safe to run more than once.
CREATE TABLE IF NOT EXISTS "public"."tenants" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'provisioning',
    "strategy" TEXT NOT NULL DEFAULT 'schema',
    "schema_name" TEXT NOT NULL,
    "database_name" TEXT,
    "server" TEXT,
    "metadata" JSONB NOT NULL DEFAULT '{}'::jsonb,
    "created_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    "updated_at" TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT "tenants_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "tenants_database_name_key" UNIQUE ("database_name"),
    CONSTRAINT "tenants_id_check" CHECK ("id" ~ '^[a-z][a-z0-9_-]{0,49}$')
);
-- Each schema-per-tenant tenant has its own schema; row-level tenants share one.
CREATE UNIQUE INDEX IF NOT EXISTS "tenants_schema_name_key" ON "public"."tenants" ("schema_name") WHERE "strategy" = 'schema';

-- Every change to a tenant row is announced, so that caches in every process
-- serving this database drop their copy at once. A transaction that sets
-- hidra.announce_after_commit announces its rows itself, after its commit.
CREATE OR REPLACE FUNCTION "public"."tenants_notify_change"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('hidra.announce_after_commit', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('hidra_tenant_changes', OLD."id");
    ELSE
        PERFORM pg_notify('hidra_tenant_changes', NEW."id");
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS "tenants_notify_change" ON "public"."tenants";
CREATE TRIGGER "tenants_notify_change" AFTER INSERT OR UPDATE OR DELETE ON "public"."tenants"
    FOR EACH ROW EXECUTE FUNCTION "public"."tenants_notify_change"();

-- A row-level tenant is bound only while this table says it is one.
CREATE OR REPLACE FUNCTION "public"."tenants_bind_row_level"(TEXT, BOOLEAN) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1751737458, hashtext($1));
    IF NOT EXISTS (SELECT FROM "public"."tenants" WHERE "id" = $1 AND "strategy" = 'row_level' AND "server" IS NULL) THEN
        RAISE EXCEPTION 'tenant % is not a row-level tenant here (moved or deprovisioned since its record was read)', $1
            USING ERRCODE = 'HD001';
    END IF;
    PERFORM set_config('hidra.tenant_id', $1, $2);
END
$$;
