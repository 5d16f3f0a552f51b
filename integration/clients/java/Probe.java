// Probe connects with pgjdbc and runs one query, printing either the rows
// (tab-separated) or "ERROR <sqlstate> <message>". Used by the integration
// tests to compare JDBC behaviour through phiproxy with PostgreSQL direct.
public class Probe {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], query = args[3];
        Tabbed.print(url, user, password, c -> c.createStatement().executeQuery(query), null);
    }
}
