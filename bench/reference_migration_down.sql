-- Undoes reference_migration.sql, so that bench-migrate can apply the same
-- migration to the same schemas again, raw and through Hidra, in rounds.
ALTER TABLE customers DROP COLUMN loyalty_points;
