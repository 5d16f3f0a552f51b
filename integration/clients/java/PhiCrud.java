import java.sql.Connection;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.util.Arrays;

/**
 * PhiCrud drives pgjdbc through phiproxy's PHI path for the integration
 * tests. It prints one line per result so the Go test can compare a run
 * through the proxy (tables patients/visits) with a run direct on the
 * plaintext twin (patients_plain/visits_plain).
 *
 * <pre>
 *   java PhiCrud crud URL USER PASSWORD SUFFIX BASE
 *   java PhiCrud canary URL USER PASSWORD ID SSN DIAGNOSIS DOB MRN
 * </pre>
 */
public class PhiCrud {
    static String fmt(Object v) {
        if (v == null) {
            return "NULL";
        }
        String s = v.toString();
        if (v instanceof byte[]) {
            StringBuilder b = new StringBuilder("BYTEA:");
            for (byte x : (byte[]) v) {
                b.append(String.format("%02x", x));
            }
            s = b.toString();
        }
        // Long values print as their length and ends, to keep the output short.
        int n = s.codePointCount(0, s.length());
        return n <= 64 ? s : s.substring(0, 8) + "…" + s.substring(s.length() - 8) + "(" + n + ")";
    }

    static void print(String label, ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        StringBuilder h = new StringBuilder(label + ": fields=");
        for (int i = 1; i <= md.getColumnCount(); i++) {
            h.append(i > 1 ? "," : "").append(md.getColumnName(i)).append(':').append(md.getColumnTypeName(i));
        }
        System.out.println(h);
        while (rs.next()) {
            StringBuilder b = new StringBuilder("  ");
            for (int i = 1; i <= md.getColumnCount(); i++) {
                b.append(i > 1 ? "|" : "").append(fmt(rs.getObject(i)));
            }
            System.out.println(b);
        }
        rs.close();
    }

    static void query(String label, PreparedStatement ps) throws SQLException {
        print(label, ps.executeQuery());
    }

    static void crud(Connection c, String suffix, int base) throws SQLException {
        String p = "patients" + suffix, v = "visits" + suffix;
        String cols = "id, name, ssn, diagnosis, dob, mrn";
        String ins = "INSERT INTO " + p + " (" + cols + ") VALUES (?, ?, ?, ?, ?, ?)";
        PreparedStatement ps = c.prepareStatement(ins);
        // One row at a time: setString, setDate, setLong, setObject.
        bindRow(ps, base + 1, "jdbc-1", ssn(base, 1), "flu", "1980-01-02", 4242L);
        System.out.println("insert: " + ps.executeUpdate());
        ps.setInt(1, base + 2);
        ps.setString(2, "jdbc-2");
        ps.setObject(3, ssn(base, 2));
        ps.setObject(4, "asthma", Types.VARCHAR);
        ps.setDate(5, Date.valueOf("1990-12-31"));
        ps.setObject(6, 7L);
        System.out.println("insert setObject: " + ps.executeUpdate());
        // addBatch/executeBatch, NULLs included.
        Object[][] rows = {
            {base + 3, "jdbc-3", null, null, null, null},
            {base + 4, "jdbc-4", ssn(base, 4), "ünïcödé \"q\" 'x'", Date.valueOf("2000-02-29"), Long.MIN_VALUE},
            {base + 5, "jdbc-5", ssn(base, 5), "x".repeat(5000), Date.valueOf("1970-01-01"), 0L},
            {base + 6, "jdbc-6", ssn(base, 6), "", Date.valueOf("2012-12-12"), Long.MAX_VALUE},
        };
        for (Object[] r : rows) {
            ps.setInt(1, (Integer) r[0]);
            ps.setString(2, (String) r[1]);
            if (r[2] == null) {
                ps.setNull(3, Types.VARCHAR);
                ps.setNull(4, Types.VARCHAR);
                ps.setNull(5, Types.DATE);
                ps.setNull(6, Types.BIGINT);
            } else {
                ps.setString(3, (String) r[2]);
                ps.setString(4, (String) r[3]);
                ps.setDate(5, (Date) r[4]);
                ps.setObject(6, r[5]);
            }
            ps.addBatch();
        }
        System.out.println("executeBatch: " + Arrays.toString(ps.executeBatch()));
        ps.close();

        PreparedStatement vi = c.prepareStatement("INSERT INTO " + v + " (id, patient_ssn, visited_on) VALUES (?, ?, ?)");
        for (int i = 1; i <= 2; i++) {
            vi.setInt(1, base + i);
            vi.setString(2, ssn(base, i));
            vi.setDate(3, Date.valueOf("2024-01-0" + i));
            vi.addBatch();
        }
        System.out.println("visits batch: " + Arrays.toString(vi.executeBatch()));
        vi.close();

        PreparedStatement sel = c.prepareStatement("SELECT " + cols + " FROM " + p + " WHERE id BETWEEN ? AND ? ORDER BY id");
        sel.setInt(1, base);
        sel.setInt(2, base + 99);
        query("select", sel);
        PreparedStatement bySsn = c.prepareStatement("SELECT id, diagnosis, dob FROM " + p + " WHERE ssn = ?");
        // Repeated executions cross prepareThreshold: server-prepared
        // statements and binary results from then on.
        for (int i : new int[] {2, 1, 2, 5, 6}) {
            bySsn.setString(1, ssn(base, i));
            query("lookup ssn", bySsn);
        }
        PreparedStatement byMrn = c.prepareStatement("SELECT id, name, dob, mrn FROM " + p + " WHERE mrn = ? AND id BETWEEN ? AND ?");
        for (long m : new long[] {4242L, Long.MIN_VALUE, 7L}) {
            byMrn.setObject(1, m);
            byMrn.setInt(2, base);
            byMrn.setInt(3, base + 99);
            query("lookup mrn", byMrn);
        }
        PreparedStatement join = c.prepareStatement("SELECT p.id, v.patient_ssn, v.visited_on FROM " + p + " p JOIN " + v
                + " v ON v.patient_ssn = p.ssn WHERE p.id BETWEEN ? AND ? ORDER BY p.id");
        join.setInt(1, base);
        join.setInt(2, base + 99);
        query("join visits", join);
        try (Statement st = c.createStatement()) {
            print("literal lookup", st.executeQuery("SELECT id, ssn, dob, mrn FROM " + p + " WHERE ssn = '" + ssn(base, 4) + "'"));
        }

        PreparedStatement upd = c.prepareStatement("UPDATE " + p + " SET diagnosis = ?, dob = ? WHERE ssn = ?");
        upd.setString(1, "cured");
        upd.setDate(2, Date.valueOf("1980-01-03"));
        upd.setString(3, ssn(base, 1));
        System.out.println("update: " + upd.executeUpdate());
        PreparedStatement del = c.prepareStatement("DELETE FROM " + p + " WHERE ssn = ?");
        del.setString(1, ssn(base, 4));
        System.out.println("delete: " + del.executeUpdate());

        // A transaction with a batch, rolled back.
        c.setAutoCommit(false);
        PreparedStatement tx = c.prepareStatement(ins);
        bindRow(tx, base + 50, "jdbc-tx", ssn(base, 50), "tx", "2001-01-01", 50L);
        tx.addBatch();
        System.out.println("tx batch: " + Arrays.toString(tx.executeBatch()));
        c.rollback();
        c.setAutoCommit(true);

        for (int i = 0; i < 2; i++) {
            sel.setInt(1, base);
            sel.setInt(2, base + 99);
            query("select final", sel);
        }
    }

    // bindRow binds a patients row (id, name, ssn, diagnosis, dob, mrn)
    // with setInt, setString, setDate and setLong.
    static void bindRow(PreparedStatement ps, int id, String name, String ssn, String diagnosis, String dob, long mrn) throws SQLException {
        ps.setInt(1, id);
        ps.setString(2, name);
        ps.setString(3, ssn);
        ps.setString(4, diagnosis);
        ps.setDate(5, Date.valueOf(dob));
        ps.setLong(6, mrn);
    }

    static String ssn(int base, int i) {
        return base + "-00-000" + i;
    }

    static void canary(Connection c, String[] a) throws SQLException {
        int id = Integer.parseInt(a[0]);
        PreparedStatement ps = c.prepareStatement("INSERT INTO patients (id, name, ssn, diagnosis, dob, mrn) VALUES (?, ?, ?, ?, ?, ?)");
        bindRow(ps, id, "canary-jdbc", a[1], a[2], a[3], Long.parseLong(a[4]));
        ps.addBatch();
        ps.executeBatch();
        PreparedStatement vi = c.prepareStatement("INSERT INTO visits (id, patient_ssn) VALUES (?, ?)");
        vi.setInt(1, id);
        vi.setString(2, a[1]);
        vi.executeUpdate();
        PreparedStatement sel = c.prepareStatement("SELECT p.ssn, p.diagnosis, p.dob, p.mrn, v.patient_ssn FROM patients p JOIN visits v ON v.patient_ssn = p.ssn WHERE p.id = ?");
        sel.setInt(1, id);
        ResultSet rs = sel.executeQuery();
        while (rs.next()) {
            System.out.println(fmt(rs.getString(1)) + "|" + fmt(rs.getString(2)) + "|" + fmt(rs.getDate(3)) + "|" + rs.getLong(4) + "|" + fmt(rs.getString(5)));
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = DriverManager.getConnection(args[1], args[2], args[3])) {
            if (args[0].equals("crud")) {
                crud(c, args[4], Integer.parseInt(args[5]));
            } else {
                canary(c, Arrays.copyOfRange(args, 4, args.length));
            }
        } catch (SQLException e) {
            System.err.println("ERROR " + e.getSQLState() + " " + e.getMessage());
            System.exit(1);
        }
    }
}
