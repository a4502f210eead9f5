//! [`Hidra::adopt_schema`]: an existing schema's objects become the first
//! tenant's, moved with `ALTER … SET SCHEMA` in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Connection;

use super::{always_kept, some_of};
use crate::error::{Error, Result, sqlstate};
use crate::hidra::Hidra;
use crate::sql::{self, Ident};
use crate::tenant::{NewTenant, Tenant, TenantId};

/// What [`Hidra::adopt_schema`] should do: which tenant the schema becomes,
/// the migration version it is at, and which tables stay shared.
///
/// ```no_run
/// use hidra::adopt::AdoptSchema;
/// use hidra::TenantId;
///
/// # async fn run(hidra: hidra::Hidra) -> hidra::Result<()> {
/// let adopted = hidra
///     .adopt_schema(
///         AdoptSchema::new(TenantId::new("acme")?)
///             .from_schema("public")
///             .baseline(3) // the schema is what tenant migrations 1 to 3 make
///             .keep(["plans", "countries"]) // shared reference tables
///             .name("Acme Inc"),
///     )
///     .await?;
/// println!("{} objects moved into {}", adopted.moved.len(), adopted.tenant.placement.schema);
/// hidra.migrator().run().await?; // applies migrations 4 and later
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct AdoptSchema {
    id: TenantId,
    from: String,
    baseline: Option<i64>,
    keep: Vec<String>,
    name: Option<String>,
    metadata: serde_json::Value,
}

impl AdoptSchema {
    /// Adopt `public` as the tenant `id`. A [`baseline`](Self::baseline) is required.
    pub fn new(id: TenantId) -> Self {
        AdoptSchema {
            id,
            from: "public".into(),
            baseline: None,
            keep: Vec::new(),
            name: None,
            metadata: serde_json::Value::Object(Default::default()),
        }
    }

    /// The schema to adopt (default `public`).
    pub fn from_schema(mut self, schema: impl Into<String>) -> Self {
        self.from = schema.into();
        self
    }

    /// The tenant migration version the schema corresponds to: its history
    /// will say every migration up to this one is applied, and the next
    /// migration run applies the later ones. `0`: none applies yet.
    pub fn baseline(mut self, version: i64) -> Self {
        self.baseline = Some(version);
        self
    }

    /// Tables that stay where they are, shared by every tenant (with the
    /// sequences they own and whatever they need that is not a table).
    pub fn keep<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keep.extend(tables.into_iter().map(Into::into));
        self
    }

    /// The tenant's display name (default: its id).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The tenant's free-form metadata.
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// What [`Hidra::adopt_schema`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SchemaAdoption {
    /// The new tenant, `active`, its schema holding the moved objects.
    pub tenant: Tenant,
    /// The objects moved, as PostgreSQL described them before the move
    /// (`table public.orders`), in the order they were moved. Indexes,
    /// constraints, triggers and owned sequences went with their tables.
    pub moved: Vec<String>,
    /// The objects that stayed, shared: the tables named, Hidra's own, and
    /// what they need.
    pub kept: Vec<String>,
    /// Objects of extensions, left in place.
    pub extension_objects: usize,
    /// The migration version recorded as applied.
    pub baseline: i64,
}

/// One object of the schema with everything that moves with it (a table's
/// indexes, constraints, triggers, owned sequences, row type).
#[derive(Debug)]
struct Unit {
    kind: String,
    identity: String,
    described: String,
    /// A relation's or routine's bare name (else empty).
    relname: String,
    extension: bool,
    owned: bool,
    pins_search_path: bool,
}

/// A unit: its catalog and oid.
type Key = (String, i64);

/// Maps every object of schema `$1` (and every sub-object of its relations)
/// to the unit it moves with.
const UNITS_CTE: &str = "
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
units (cls, obj, ucls, uobj) AS (
    SELECT 'pg_class'::regclass, c.oid,
           CASE WHEN c.relkind = 'c' THEN 'pg_type'::regclass ELSE 'pg_class'::regclass END,
           CASE
               WHEN c.relkind = 'c' THEN c.reltype
               WHEN c.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = c.oid)
               WHEN c.relkind = 'S' THEN coalesce((SELECT d.refobjid FROM pg_depend d
                   WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') LIMIT 1), c.oid)
               ELSE c.oid
           END
    FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL
    SELECT 'pg_type'::regclass, t.oid,
           CASE WHEN o.typrelid <> 0 AND r.relkind <> 'c' THEN 'pg_class'::regclass ELSE 'pg_type'::regclass END,
           CASE WHEN o.typrelid <> 0 AND r.relkind <> 'c' THEN o.typrelid ELSE o.oid END
    FROM pg_type t
    CROSS JOIN LATERAL (SELECT coalesce(
        (SELECT e.oid FROM pg_type e WHERE e.typarray = t.oid),
        (SELECT g.rngtypid FROM pg_range g WHERE g.rngmultitypid = t.oid),
        t.oid) AS base) b
    JOIN pg_type o ON o.oid = b.base
    LEFT JOIN pg_class r ON r.oid = o.typrelid
    WHERE t.typnamespace = (SELECT oid FROM ns)
  UNION ALL
    SELECT 'pg_proc'::regclass, p.oid, 'pg_proc'::regclass, p.oid
    FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns)
  UNION ALL
    SELECT 'pg_constraint'::regclass, k.oid,
           CASE WHEN k.conrelid <> 0 THEN 'pg_class'::regclass ELSE 'pg_type'::regclass END,
           CASE WHEN k.conrelid <> 0 THEN k.conrelid ELSE k.contypid END
    FROM pg_constraint k WHERE k.connamespace = (SELECT oid FROM ns)
  UNION ALL
    SELECT s.cls, s.obj, 'pg_class'::regclass, s.rel
    FROM (SELECT 'pg_trigger'::regclass, oid, tgrelid FROM pg_trigger
          UNION ALL SELECT 'pg_attrdef'::regclass, oid, adrelid FROM pg_attrdef
          UNION ALL SELECT 'pg_rewrite'::regclass, oid, ev_class FROM pg_rewrite
          UNION ALL SELECT 'pg_policy'::regclass, oid, polrelid FROM pg_policy) s (cls, obj, rel)
    JOIN pg_class c ON c.oid = s.rel WHERE c.relnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_collation'::regclass, oid, 'pg_collation'::regclass, oid FROM pg_collation WHERE collnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_conversion'::regclass, oid, 'pg_conversion'::regclass, oid FROM pg_conversion WHERE connamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_operator'::regclass, oid, 'pg_operator'::regclass, oid FROM pg_operator WHERE oprnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_opclass'::regclass, oid, 'pg_opclass'::regclass, oid FROM pg_opclass WHERE opcnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_opfamily'::regclass, oid, 'pg_opfamily'::regclass, oid FROM pg_opfamily WHERE opfnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_ts_config'::regclass, oid, 'pg_ts_config'::regclass, oid FROM pg_ts_config WHERE cfgnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_ts_dict'::regclass, oid, 'pg_ts_dict'::regclass, oid FROM pg_ts_dict WHERE dictnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_ts_parser'::regclass, oid, 'pg_ts_parser'::regclass, oid FROM pg_ts_parser WHERE prsnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_ts_template'::regclass, oid, 'pg_ts_template'::regclass, oid FROM pg_ts_template WHERE tmplnamespace = (SELECT oid FROM ns)
  UNION ALL SELECT 'pg_statistic_ext'::regclass, oid, 'pg_statistic_ext'::regclass, oid FROM pg_statistic_ext WHERE stxnamespace = (SELECT oid FROM ns)
)";

/// Every unit of the schema: kind, identity, description, relation name,
/// whether an extension owns it, whether the current role may alter it,
/// whether it is a routine that sets its own `search_path`.
const UNITS: &str = "
SELECT u.ucls::regclass::text, u.uobj::int8,
       CASE u.ucls
           WHEN 'pg_class'::regclass THEN 'rel_' || (SELECT c.relkind::text FROM pg_class c WHERE c.oid = u.uobj)
           WHEN 'pg_type'::regclass THEN 'type_' || (SELECT t.typtype::text FROM pg_type t WHERE t.oid = u.uobj)
           WHEN 'pg_proc'::regclass THEN 'routine'
           ELSE 'other'
       END,
       (pg_identify_object(u.ucls, u.uobj, 0)).identity,
       pg_describe_object(u.ucls, u.uobj, 0),
       coalesce((SELECT c.relname::text FROM pg_class c WHERE u.ucls = 'pg_class'::regclass AND c.oid = u.uobj),
                (SELECT p.proname::text FROM pg_proc p WHERE u.ucls = 'pg_proc'::regclass AND p.oid = u.uobj), ''),
       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = u.ucls AND d.objid = u.uobj AND d.deptype = 'e'),
       coalesce(pg_has_role(CASE u.ucls
           WHEN 'pg_class'::regclass THEN (SELECT c.relowner FROM pg_class c WHERE c.oid = u.uobj)
           WHEN 'pg_type'::regclass THEN (SELECT t.typowner FROM pg_type t WHERE t.oid = u.uobj)
           WHEN 'pg_proc'::regclass THEN (SELECT p.proowner FROM pg_proc p WHERE p.oid = u.uobj)
       END, 'USAGE'), true),
       EXISTS (SELECT 1 FROM pg_proc p, unnest(p.proconfig) s
               WHERE u.ucls = 'pg_proc'::regclass AND p.oid = u.uobj AND s LIKE 'search\\_path=%')
FROM (SELECT DISTINCT ucls, uobj FROM units) u
ORDER BY 1, 2";

/// Every dependency on a unit of the schema: the depending unit (`NULL` when
/// the depending object is outside the schema, then described) and the unit
/// depended on.
const EDGES: &str = "
SELECT DISTINCT du.ucls::regclass::text, du.uobj::int8, ru.ucls::regclass::text, ru.uobj::int8,
       CASE WHEN du.ucls IS NULL THEN pg_describe_object(d.classid, d.objid, 0) END
FROM pg_depend d
JOIN units ru ON ru.cls = d.refclassid AND ru.obj = d.refobjid
LEFT JOIN units du ON du.cls = d.classid AND du.obj = d.objid
WHERE d.deptype IN ('n', 'a')";

/// [`UNITS_CTE`] followed by `query` ([`UNITS`] or [`EDGES`]).
fn with_units(query: &'static str) -> sqlx::SqlStr {
    let mut sql = sql::Statement::new();
    sql.sql(UNITS_CTE).sql(query);
    sql.into_sql()
}

/// A dependency: the depending unit (or the description of an object outside
/// the schema), and the unit it depends on.
type Edge = (Option<Key>, Option<String>, Key);

/// The `ALTER` keyword that moves a unit of `kind`, `None` when Hidra does
/// not move such objects.
fn keyword(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "rel_r" | "rel_p" => "TABLE",
        "rel_v" => "VIEW",
        "rel_m" => "MATERIALIZED VIEW",
        "rel_S" => "SEQUENCE",
        "rel_f" => "FOREIGN TABLE",
        "type_e" | "type_r" | "type_c" | "type_m" => "TYPE",
        "type_d" => "DOMAIN",
        "routine" => "ROUTINE",
        _ => return None,
    })
}

/// Relations that hold or show rows: keeping one because a kept object
/// needs it would keep tenant data shared, so that is refused instead.
fn holds_rows(kind: &str) -> bool {
    matches!(kind, "rel_r" | "rel_p" | "rel_v" | "rel_m" | "rel_f")
}

/// What the inspection decided.
#[derive(Debug)]
struct Plan {
    /// `ALTER … SET SCHEMA` statements, and the description of each moved unit.
    moves: Vec<(&'static str, String, String)>,
    kept: Vec<String>,
    extension_objects: usize,
}

impl Hidra {
    /// Makes an existing schema's objects the first tenant's, moving them
    /// into the tenant's schema with `ALTER … SET SCHEMA` (no data copied),
    /// registering the tenant and recording its migration baseline, all in
    /// one transaction; see [`crate::adopt`].
    ///
    /// Refuses with [`Error::AdoptRefused`] (listing every problem) before
    /// anything changes when the schema holds something that cannot move or
    /// is needed from outside it, and with [`Error::AlreadyExists`] or
    /// [`Error::SchemaTaken`] when the tenant or its schema exists.
    pub async fn adopt_schema(&self, adopt: AdoptSchema) -> Result<SchemaAdoption> {
        let started = std::time::Instant::now();
        let from = Ident::new(adopt.from.clone(), "schema to adopt")?;
        let what = format!("schema `{from}` as tenant `{}`", adopt.id);
        let refuse = |problems: Vec<String>| Error::AdoptRefused {
            what: what.clone(),
            problems,
        };
        let migrations = &self.inner.migrations.tenant;
        let baseline = adopt.baseline.ok_or_else(|| {
            refuse(vec![format!(
                "no baseline given: name the tenant migration version the schema is at (latest {}; 0 if none applies yet)",
                migrations.latest()
            )])
        })?;
        let Some(digest) = migrations.digest_at(baseline) else {
            return Err(refuse(vec![format!(
                "the baseline {baseline} is not one of the tenant migrations' versions ({}): name one of them, or 0",
                some_of(
                    &migrations
                        .iter()
                        .map(|m| m.version.to_string())
                        .collect::<Vec<_>>(),
                    10
                )
            )]));
        };
        let schema = self.inner.schema.naming.schema_for(&adopt.id);
        if from.as_str() == crate::tenant::INTERNAL_SCHEMA || from == schema {
            return Err(refuse(vec![format!(
                "`{from}` is Hidra's own schema or the tenant's: adopt the application's schema"
            )]));
        }

        let mut conn = self.acquire_shared().await?;
        self.ensure_internal_for(&mut conn, &adopt.id).await?;
        let mut tx = conn
            .begin()
            .await
            .map_err(Error::db("beginning the adoption"))?;
        let managed: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM hidra.schema_versions WHERE schema_name = $1)",
        )
        .bind(from.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db("checking the schema to adopt"))?;
        if managed {
            return Err(refuse(vec![format!(
                "`{from}` is already a tenant's schema"
            )]));
        }
        if self
            .inner
            .registry
            .store
            .get(&mut tx, &adopt.id)
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(adopt.id));
        }
        // Objects described with their schema, whatever the search path.
        set_local(&mut tx, "SET LOCAL search_path TO pg_catalog").await?;
        let plan = self.plan_adoption(&mut tx, &from, &adopt).await?;
        set_local(&mut tx, "SET LOCAL search_path TO DEFAULT").await?;
        let plan = match plan {
            Ok(plan) => plan,
            Err(problems) => return Err(refuse(problems)),
        };

        let placement = crate::strategy::schema::placement(&schema);
        let mut new = NewTenant::new(adopt.id.clone()).metadata(adopt.metadata.clone());
        if let Some(name) = &adopt.name {
            new = new.name(name.clone());
        }
        let draft = self.draft(new, placement);
        self.inner.registry.store.insert(&mut tx, &draft).await?;
        let mut ddl = sql::Statement::new();
        ddl.sql("CREATE SCHEMA ").ident(&schema).sql(";\n");
        for (keyword, identity, _) in &plan.moves {
            ddl.append(&sql::set_schema(keyword, identity, &schema));
        }
        ddl.append(&crate::migrate::tenant_history_ddl(&schema));
        if let Err(source) = sqlx::raw_sql(ddl.into_sql()).execute(&mut *tx).await {
            return Err(match crate::error::db_code(&source) {
                Some((code, _)) if code == sqlstate::DUPLICATE_SCHEMA => Error::SchemaTaken {
                    id: adopt.id.clone(),
                    schema: schema.to_string(),
                },
                _ => Error::Database {
                    context: "moving the schema's objects into the tenant's schema",
                    source,
                },
            });
        }
        let record = crate::migrate::record_history(&schema);
        for m in migrations.iter().take_while(|m| m.version <= baseline) {
            sqlx::query(record.clone())
                .bind(m.version)
                .bind(&m.description)
                .bind(&m.checksum)
                .bind(0_i64)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("recording the migration baseline"))?;
        }
        sqlx::query(
            "INSERT INTO hidra.schema_versions (schema_name, version, digest) VALUES ($1, $2, $3) \
             ON CONFLICT (schema_name) DO UPDATE SET version = EXCLUDED.version, \
             digest = EXCLUDED.digest, updated_at = now()",
        )
        .bind(schema.as_str())
        .bind(baseline)
        .bind(digest)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("recording the migration baseline"))?;
        let tenant = self.activate_adopted(&mut tx, &adopt.id).await?;
        tx.commit()
            .await
            .map_err(Error::db("committing the adoption"))?;
        tracing::info!(
            tenant = %tenant.id,
            from = %from,
            moved = plan.moves.len(),
            baseline,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "adopted a schema"
        );
        Ok(SchemaAdoption {
            tenant,
            moved: plan.moves.into_iter().map(|m| m.2).collect(),
            kept: plan.kept,
            extension_objects: plan.extension_objects,
            baseline,
        })
    }

    /// Inspects `from` and decides what moves, or lists every problem.
    async fn plan_adoption(
        &self,
        tx: &mut sqlx::PgConnection,
        from: &Ident,
        adopt: &AdoptSchema,
    ) -> Result<std::result::Result<Plan, Vec<String>>> {
        type UnitRow = (
            String,
            i64,
            String,
            String,
            String,
            String,
            bool,
            bool,
            bool,
        );
        let rows: Vec<UnitRow> = sqlx::query_as(with_units(UNITS))
            .bind(from.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db("listing the objects of the schema to adopt"))?;
        let units: BTreeMap<Key, Unit> = rows
            .into_iter()
            .map(
                |(cls, oid, kind, identity, described, relname, extension, owned, pins)| {
                    let unit = Unit {
                        kind,
                        identity,
                        described,
                        relname,
                        extension,
                        owned,
                        pins_search_path: pins,
                    };
                    ((cls, oid), unit)
                },
            )
            .collect();
        type EdgeRow = (Option<String>, Option<i64>, String, i64, Option<String>);
        let edges: Vec<Edge> = sqlx::query_as::<_, EdgeRow>(with_units(EDGES))
            .bind(from.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db("reading what depends on the schema's objects"))?
            .into_iter()
            .map(|(cls, oid, rcls, roid, outside)| (cls.zip(oid), outside, (rcls, roid)))
            .collect();

        let mut problems = Vec::new();
        let registry = self
            .inner
            .registry
            .own
            .as_deref()
            .map(|s| s.registry().table());
        let is_registry = |name: &str| {
            registry
                .is_some_and(|t| t.name().as_str() == name && t.schema().is_none_or(|s| s == from))
        };
        // The registry's row-level binding function goes with it (its
        // trigger function stays through the trigger's dependency).
        let is_registry_routine = |name: &str| {
            name.strip_suffix("_bind_row_level")
                .is_some_and(&is_registry)
        };
        let mut kept: BTreeSet<&Key> = BTreeSet::new();
        for name in &adopt.keep {
            match units
                .iter()
                .find(|(_, u)| u.relname == *name && u.kind.starts_with("rel_"))
            {
                Some((key, _)) => {
                    kept.insert(key);
                }
                None => problems.push(format!(
                    "there is no table `{name}` in schema `{from}` to keep shared: check the name"
                )),
            }
        }
        for (key, unit) in &units {
            if unit.kind.starts_with("rel_")
                && (always_kept(&unit.relname) || is_registry(&unit.relname))
                || unit.kind == "routine" && is_registry_routine(&unit.relname)
            {
                kept.insert(key);
            }
        }
        // What kept objects need stays with them: types, routines,
        // sequences. A table (or view) they need would keep tenant rows
        // shared: refused.
        loop {
            let mut grew = false;
            for (dependent, _, needed) in &edges {
                let Some(dependent) = dependent else { continue };
                if dependent == needed || !kept.contains(dependent) || kept.contains(needed) {
                    continue;
                }
                let (Some(d), Some(n)) = (units.get(dependent), units.get(needed)) else {
                    continue;
                };
                if n.extension {
                    continue;
                }
                if holds_rows(&n.kind) {
                    let problem = format!(
                        "{} stays shared but depends on {}, which would move into the tenant's schema: keep it shared too, or drop the dependency",
                        d.described, n.described
                    );
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                    continue;
                }
                kept.insert(needed);
                grew = true;
            }
            if !grew {
                break;
            }
        }
        let in_shared = self.inner.schema.shared.iter().any(|s| s == from);
        if !in_shared && !adopt.keep.is_empty() {
            problems.push(format!(
                "the tables kept shared would stay in `{from}`, which is not a shared schema, so tenants would not find them: add `{from}` to the shared schemas (`HidraBuilder::shared_schemas`), or move them to one first"
            ));
        }
        let mut moves = Vec::new();
        let mut extension_objects = 0;
        let mut extension_problem = false;
        for (key, unit) in &units {
            if kept.contains(key) {
                continue;
            }
            if unit.extension {
                extension_objects += 1;
                if !in_shared && !extension_problem {
                    extension_problem = true;
                    problems.push(format!(
                        "schema `{from}` holds objects of an extension ({}), which cannot move with the tenant and would be out of its reach, since `{from}` is not a shared schema: move the extension to a shared schema first (`ALTER EXTENSION … SET SCHEMA public`)",
                        unit.described
                    ));
                }
                continue;
            }
            let Some(keyword) = keyword(&unit.kind) else {
                problems.push(format!(
                    "{} cannot be moved into a tenant's schema (Hidra moves tables, views, sequences, routines and types): drop it, or move it to another schema first",
                    unit.described
                ));
                continue;
            };
            if !unit.owned {
                problems.push(format!(
                    "{} is owned by another role: adopt as its owner or a superuser",
                    unit.described
                ));
            }
            if unit.pins_search_path {
                problems.push(format!(
                    "{} sets its own search_path, so it would not find the tenant's tables: `ALTER ROUTINE {} RESET search_path` first",
                    unit.described, unit.identity
                ));
            }
            moves.push((keyword, unit.identity.clone(), unit.described.clone()));
        }
        for (dependent, outside, needed) in &edges {
            if kept.contains(needed) {
                continue;
            }
            let Some(n) = units.get(needed).filter(|n| !n.extension) else {
                continue;
            };
            if let (None, Some(outside)) = (dependent, outside) {
                problems.push(format!(
                    "{outside}, outside schema `{from}`, depends on {}, which would move into the tenant's schema: drop it (recreate it afterwards), or keep {} shared",
                    n.described, n.described
                ));
            }
        }
        if !moves.iter().any(|m| m.0 == "TABLE") {
            problems.push(format!(
                "schema `{from}` has no tables to adopt (was it adopted already?)"
            ));
        }
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
        Ok(Ok(Plan {
            moves,
            kept: kept
                .iter()
                .filter_map(|k| units.get(*k))
                .map(|u| u.described.clone())
                .collect(),
            extension_objects,
        }))
    }
}

/// Runs one of the adoption's fixed `SET LOCAL` statements.
async fn set_local(tx: &mut sqlx::PgConnection, statement: &'static str) -> Result<()> {
    sqlx::raw_sql(statement)
        .execute(tx)
        .await
        .map_err(Error::db("inspecting the schema to adopt"))?;
    Ok(())
}
