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

// CatalogTriggers are the event triggers' names and events.
var CatalogTriggers = [...]struct{ Name, Event string }{
	{"phiproxy_catalog_ddl", "ddl_command_end"},
	{"phiproxy_catalog_drop", "sql_drop"},
}

// CatalogTriggerStatusSQL reads how many of CatalogTriggers exist, enabled
// and calling CatalogTriggerFunction, and whether the current role may
// create event triggers (a superuser: PostgreSQL asks for one).
const CatalogTriggerStatusSQL = `SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_event_trigger e
    WHERE e.evtname IN ('phiproxy_catalog_ddl', 'phiproxy_catalog_drop') AND e.evtenabled <> 'D'
      AND e.evtfoid = pg_catalog.to_regprocedure('` + CatalogTriggerFunction + `()'))::int4,
  (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)`

// CatalogTriggerDDL creates or replaces the function and both triggers
// (run in one transaction, after the overlay's schema exists).
func CatalogTriggerDDL() []string {
	stmts := []string{
		`CREATE SCHEMA IF NOT EXISTS ` + OverlaySchema,
		`CREATE OR REPLACE FUNCTION ` + CatalogTriggerFunction + `() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.pg_notify('` + CatalogChannel + `', '');
END
$$`,
	}
	for _, t := range CatalogTriggers {
		stmts = append(stmts, `DROP EVENT TRIGGER IF EXISTS `+t.Name,
			`CREATE EVENT TRIGGER `+t.Name+` ON `+t.Event+` EXECUTE FUNCTION `+CatalogTriggerFunction+`()`)
	}
	return stmts
}
