import java.sql.*;
import java.util.Properties;

// Columns prints what pgjdbc's DatabaseMetaData.getColumns reports for one
// table (the introspection JDBC tools and Hibernate's schema validation
// use), one column per line, tab-separated; "ERROR <sqlstate> <message>"
// on failure.
public class Columns {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], table = args[3];
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        String[] fields = {"COLUMN_NAME", "DATA_TYPE", "TYPE_NAME", "COLUMN_SIZE", "DECIMAL_DIGITS", "NULLABLE", "COLUMN_DEF", "ORDINAL_POSITION"};
        try (Connection c = DriverManager.getConnection(url, props);
             ResultSet rs = c.getMetaData().getColumns(null, "public", table, null)) {
            while (rs.next()) {
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < fields.length; i++) {
                    if (i > 0) sb.append('\t');
                    sb.append(rs.getString(fields[i]));
                }
                System.out.println(sb);
            }
        } catch (SQLException e) {
            System.out.println("ERROR " + e.getSQLState() + " " + e.getMessage());
        }
    }
}
