// Columns prints what pgjdbc's DatabaseMetaData.getColumns reports for one
// table (the introspection JDBC tools and Hibernate's schema validation
// use), one column per line, tab-separated; "ERROR <sqlstate> <message>"
// on failure.
public class Columns {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], table = args[3];
        String[] fields = {"COLUMN_NAME", "DATA_TYPE", "TYPE_NAME", "COLUMN_SIZE", "DECIMAL_DIGITS", "NULLABLE", "COLUMN_DEF", "ORDINAL_POSITION"};
        Tabbed.print(url, user, password, c -> c.getMetaData().getColumns(null, "public", table, null), fields);
    }
}
