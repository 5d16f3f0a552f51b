import java.sql.*;
import java.util.Properties;

// Probe connects with pgjdbc and runs one query, printing either the rows
// (tab-separated) or "ERROR <sqlstate> <message>". Used by the integration
// tests to compare JDBC behaviour through phiproxy with PostgreSQL direct.
public class Probe {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], query = args[3];
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        try (Connection c = DriverManager.getConnection(url, props);
             Statement st = c.createStatement();
             ResultSet rs = st.executeQuery(query)) {
            int n = rs.getMetaData().getColumnCount();
            while (rs.next()) {
                StringBuilder sb = new StringBuilder();
                for (int i = 1; i <= n; i++) {
                    if (i > 1) sb.append('\t');
                    sb.append(rs.getString(i));
                }
                System.out.println(sb);
            }
        } catch (SQLException e) {
            System.out.println("ERROR " + e.getSQLState() + " " + e.getMessage());
        }
    }
}
