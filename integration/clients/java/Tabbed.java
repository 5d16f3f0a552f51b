import java.sql.*;
import java.util.Properties;

// Tabbed is what Probe and Columns share: they connect with a user and a
// password and print one line per row, its values tab-separated, or
// "ERROR <sqlstate> <message>" on failure.
final class Tabbed {
    interface Query {
        ResultSet run(Connection c) throws SQLException;
    }

    // print connects to url, runs query and prints its rows: the columns
    // named by names, or every column when names is null.
    static void print(String url, String user, String password, Query query, String[] names) {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        try (Connection c = DriverManager.getConnection(url, props);
             ResultSet rs = query.run(c)) {
            int n = names != null ? names.length : rs.getMetaData().getColumnCount();
            while (rs.next()) {
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < n; i++) {
                    if (i > 0) sb.append('\t');
                    sb.append(names != null ? rs.getString(names[i]) : rs.getString(i + 1));
                }
                System.out.println(sb);
            }
        } catch (SQLException e) {
            System.out.println("ERROR " + e.getSQLState() + " " + e.getMessage());
        }
    }
}
