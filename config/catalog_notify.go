package config

// The catalog notification (docs/configuration.md, "Keeping the catalog
// current"): event triggers on ddl_command_end and sql_drop that NOTIFY
// CatalogChannel after every DDL in the database, so that each running
// proxy, LISTENing on it, refreshes its catalog snapshot at once instead
// of at its next periodic refresh. This file holds the SQL; proxy/phi
// installs it (with the overlay) and listens.

// CatalogChannel is the NOTIFY channel that announces DDL.
const CatalogChannel = "phiproxy_catalog"

// CatalogTriggerFunction is the event trigger function; it lives in the
// overlay's schema.
const CatalogTriggerFunction = OverlaySchema + ".catalog_changed"

// catalogTriggerMarker is the function's comment: a function from another
// phiproxy version is replaced.
const catalogTriggerMarker = "phiproxy catalog notification v1"

// CatalogTriggers are the event triggers' names and events.
var CatalogTriggers = [...]struct{ Name, Event string }{
	{"phiproxy_catalog_ddl", "ddl_command_end"},
	{"phiproxy_catalog_drop", "sql_drop"},
}

// CatalogTriggerStatusSQL reads how many of CatalogTriggers exist, enabled
// and calling this version's CatalogTriggerFunction, and whether the current role may
// create event triggers (a superuser: PostgreSQL asks for one).
const CatalogTriggerStatusSQL = `SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_event_trigger e
    WHERE e.evtname IN ('phiproxy_catalog_ddl', 'phiproxy_catalog_drop') AND e.evtenabled <> 'D'
      AND e.evtfoid = pg_catalog.to_regprocedure('` + CatalogTriggerFunction + `()')
      AND pg_catalog.obj_description(e.evtfoid, 'pg_proc') = '` + catalogTriggerMarker + `')::int4,
  (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)`

// CatalogTriggerDDL creates or replaces the function and both triggers
// (run in one transaction). The function notifies after DDL on anything
// but temporary objects, which sessions create and drop at will.
func CatalogTriggerDDL() []string {
	stmts := []string{
		`CREATE SCHEMA IF NOT EXISTS ` + OverlaySchema,
		`CREATE OR REPLACE FUNCTION ` + CatalogTriggerFunction + `() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Temporary objects are the sessions' own business: no refresh.
  IF TG_EVENT = 'sql_drop' THEN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
      RETURN;
    END IF;
  ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() WHERE schema_name IS DISTINCT FROM 'pg_temp') THEN
    RETURN;
  END IF;
  PERFORM pg_catalog.pg_notify('` + CatalogChannel + `', '');
END
$$`,
		`COMMENT ON FUNCTION ` + CatalogTriggerFunction + `() IS '` + catalogTriggerMarker + `'`,
	}
	for _, t := range CatalogTriggers {
		stmts = append(stmts, `DROP EVENT TRIGGER IF EXISTS `+t.Name,
			`CREATE EVENT TRIGGER `+t.Name+` ON `+t.Event+` EXECUTE FUNCTION `+CatalogTriggerFunction+`()`)
	}
	return stmts
}
