//! What known functions do beyond returning a value: effects outside the statement's
//! rows, or SQL run from a string. Names as the server resolves built-ins.

/// Functions whose effects reach beyond the rows of the statement.
pub fn is_side_effect_function(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "pg_read_file",
        "pg_read_binary_file",
        "pg_stat_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
        // Sequences advance outside the statement's rows (and its transaction).
        "nextval",
        "setval",
        // Large objects: every `lo_*` (below) plus the old names of two of them.
        "lowrite",
        "loread",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_log_backend_memory_contexts",
        "pg_logical_emit_message",
        "pg_import_system_collations",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
    ];
    const PREFIX: &[&str] = &[
        "lo_",
        "dblink",
        "pg_replication_",
        "pg_create_physical_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_",
        "pg_stat_reset",
        "pg_logical_slot_",
    ];
    EXACT.contains(&name) || PREFIX.iter().any(|p| name.starts_with(p))
}

/// Functions that run SQL given to them as a string or name a relation by string.
pub fn is_dynamic_sql_function(name: &str) -> bool {
    matches!(
        name,
        "query_to_xml"
            | "query_to_xmlschema"
            | "query_to_xml_and_xmlschema"
            | "cursor_to_xml"
            | "cursor_to_xmlschema"
            | "table_to_xml"
            | "table_to_xmlschema"
            | "table_to_xml_and_xmlschema"
            | "schema_to_xml"
            | "schema_to_xmlschema"
            | "schema_to_xml_and_xmlschema"
            | "database_to_xml"
            | "database_to_xmlschema"
            | "database_to_xml_and_xmlschema"
            | "ts_stat"
            | "ts_rewrite"
    )
}

/// A name part as calls are written in requests: in double quotes when it holds a dot or
/// a quote, so a joined `schema.name` splits back exactly (`"a.b"` is one part).
pub fn quote_part(part: &str) -> String {
    if part.contains('.') || part.contains('"') {
        format!("\"{}\"", part.replace('"', "\"\""))
    } else {
        part.to_owned()
    }
}
