// HibernateCrud drives Hibernate 3.6 (Debian libhibernate3-java) with
// pgjdbc as its users write it, for phiproxy's ORM suite
// (integration/orm_test.go): hbm2ddl validate at startup, save() of many
// entities with JDBC batching, HQL and Criteria with IN lists, a
// many-to-one joined on the shared-key column, JDBC savepoints under a
// Hibernate transaction, a native upsert, HQL bulk update/delete, a
// forward-only ScrollableResults with a fetch size, and the refusals.
//
//   java HibernateCrud JDBC-URL USER PASSWORD phi|plain
//
// It prints one JSON object per line; the test compares the run through
// phiproxy with the run on the plaintext twin.

import java.io.Serializable;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.text.SimpleDateFormat;
import java.util.*;
import javax.persistence.*;
import org.hibernate.*;
import org.hibernate.cfg.Configuration;
import org.hibernate.criterion.Restrictions;
import org.hibernate.criterion.Order;
import org.hibernate.exception.ConstraintViolationException;
import org.hibernate.exception.JDBCConnectionException;

public class HibernateCrud {
    @Entity
    @Table(name = "patients")
    public static class Patient implements Serializable {
        @Id @GeneratedValue(strategy = GenerationType.IDENTITY) Integer id;
        @Column(nullable = false) String name;
        @Column(unique = true) String ssn;
        String diagnosis;
        String notes;
        @Temporal(TemporalType.DATE) Date dob;
        @Column(nullable = false) Boolean active = true;

        public Patient() {}

        Patient(String name, String ssn, String diagnosis, String notes, String dob) {
            this.name = name; this.ssn = ssn; this.diagnosis = diagnosis; this.notes = notes; this.dob = date(dob);
        }
    }

    @Entity
    @Table(name = "visits")
    public static class Visit implements Serializable {
        @Id @GeneratedValue(strategy = GenerationType.IDENTITY) Integer id;
        @ManyToOne(optional = false)
        @JoinColumn(name = "patient_ssn", referencedColumnName = "ssn")
        Patient patient;
        @Column(name = "visited_on", nullable = false) @Temporal(TemporalType.DATE) Date visitedOn;
        String reason;

        public Visit() {}
    }

    static Date date(String s) {
        if (s == null) return null;
        try {
            SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd");
            f.setTimeZone(TimeZone.getTimeZone("UTC"));
            return f.parse(s);
        } catch (java.text.ParseException e) {
            throw new IllegalArgumentException(e);
        }
    }

    static String day(Date d) {
        if (d == null) return null;
        SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd");
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        return f.format(d);
    }

    static String json(Object v) {
        if (v == null) return "null";
        if (v instanceof String) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : ((String) v).toCharArray()) {
                if (c == '"' || c == '\\') b.append('\\').append(c);
                else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                else b.append(c);
            }
            return b.append('"').toString();
        }
        if (v instanceof Date) return json(day((Date) v));
        if (v instanceof Number || v instanceof Boolean) return v.toString();
        if (v instanceof Object[]) return json(Arrays.asList((Object[]) v));
        if (v instanceof Patient) return json(row((Patient) v));
        if (v instanceof Collection) {
            StringJoiner j = new StringJoiner(",", "[", "]");
            for (Object o : (Collection<?>) v) j.add(json(o));
            return j.toString();
        }
        throw new IllegalArgumentException("json: " + v.getClass());
    }

    static List<Object> row(Patient p) {
        return Arrays.asList(p.id, p.name, p.ssn, p.diagnosis, p.notes, day(p.dob), p.active);
    }

    static void put(String key, Object v) {
        System.out.println("{" + json(key) + ":" + json(v) + "}");
    }

    static String sqlstate(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof JDBCException) return ((JDBCException) t).getSQLState();
            if (t instanceof SQLException) return ((SQLException) t).getSQLState();
        }
        return e.toString();
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2];
        boolean phi = args[3].equals("phi");
        TimeZone.setDefault(TimeZone.getTimeZone("UTC"));
        Configuration cfg = new Configuration()
            .addAnnotatedClass(Patient.class).addAnnotatedClass(Visit.class)
            .setProperty("hibernate.connection.driver_class", "org.postgresql.Driver")
            .setProperty("hibernate.connection.url", url)
            .setProperty("hibernate.connection.username", user)
            .setProperty("hibernate.connection.password", password)
            .setProperty("hibernate.connection.pool_size", "2")
            .setProperty("hibernate.dialect", "org.hibernate.dialect.PostgreSQLDialect")
            .setProperty("hibernate.jdbc.batch_size", "10")
            .setProperty("hibernate.hbm2ddl.auto", "validate");
        // Startup: hbm2ddl validate reads DatabaseMetaData.getColumns and
        // fails if a column's type does not match the mapping.
        SessionFactory sf = cfg.buildSessionFactory();
        put("validated", true);

        Session s = sf.openSession();
        Transaction tx = s.beginTransaction();
        List<Patient> seed = Arrays.asList(
            new Patient("Ada", "111-11-1111", "flu", "first visit", "1980-01-02"),
            new Patient("Bob", "222-22-2222", null, "ünïcödé \"q\" 'x'", "1975-06-30"),
            new Patient("Cy", "333-33-3333", "asthma", null, null),
            new Patient("Di", "444-44-4444", "flu", "", "2000-02-29"),
            new Patient("Ed", null, "none", "no ssn", "1999-12-31"));
        for (Patient p : seed) s.save(p);
        String[][] visits = {{"111-11-1111", "2024-01-05", "checkup"}, {"222-22-2222", "2024-02-06", null}, {"111-11-1111", "2024-03-07", "follow-up"}};
        for (String[] v : visits) {
            Visit x = new Visit();
            x.patient = (Patient) s.createQuery("from HibernateCrud$Patient where ssn = :ssn").setParameter("ssn", v[0]).uniqueResult();
            x.visitedOn = date(v[1]);
            x.reason = v[2];
            s.save(x);
        }
        tx.commit();
        s.close();
        put("saved", seed);

        s = sf.openSession();
        put("HQL =", s.createQuery("from HibernateCrud$Patient p where p.ssn = :ssn").setParameter("ssn", "222-22-2222").uniqueResult());
        put("HQL = unknown", s.createQuery("from HibernateCrud$Patient p where p.ssn = :ssn").setParameter("ssn", "000-00-0000").uniqueResult());
        put("HQL in", s.createQuery("from HibernateCrud$Patient p where p.ssn in (:ssns) order by p.id")
            .setParameterList("ssns", Arrays.asList("111-11-1111", "444-44-4444", "000-00-0000")).list());
        put("Criteria", s.createCriteria(Patient.class).add(Restrictions.or(Restrictions.isNull("diagnosis"), Restrictions.isNull("dob")))
            .addOrder(Order.asc("id")).list());
        put("Criteria in", s.createCriteria(Patient.class).add(Restrictions.in("ssn", new Object[]{"333-33-3333"})).list());
        put("HQL join", s.createQuery("select v.id, p.name, p.ssn, v.visitedOn from HibernateCrud$Visit v join v.patient p order by v.id").list());
        List<Object> many = new ArrayList<>();
        for (Object o : s.createQuery("from HibernateCrud$Visit v order by v.id").list()) {
            Visit v = (Visit) o;
            many.add(Arrays.asList(v.id, v.patient.name, v.reason));
        }
        put("many-to-one", many);
        put("HQL group by", s.createQuery("select p.ssn, count(v.id) from HibernateCrud$Visit v join v.patient p group by p.ssn order by count(v.id) desc, min(v.id)").list());
        s.close();

        // A transaction with a JDBC savepoint rolled back, and a unique
        // violation.
        s = sf.openSession();
        tx = s.beginTransaction();
        Patient ada = (Patient) s.createQuery("from HibernateCrud$Patient where ssn = :ssn").setParameter("ssn", "111-11-1111").uniqueResult();
        ada.diagnosis = "bronchitis";
        s.flush();
        final Savepoint[] sp = new Savepoint[1];
        s.doWork(c -> sp[0] = c.setSavepoint("before_notes"));
        ada.notes = "rolled back";
        s.flush();
        s.doWork(c -> c.rollback(sp[0]));
        s.createQuery("update HibernateCrud$Patient set diagnosis = :d, dob = :dob where ssn in (:ssns)")
            .setParameter("d", "cold").setParameter("dob", date("1975-07-01"))
            .setParameterList("ssns", Arrays.asList("222-22-2222")).executeUpdate();
        tx.commit();
        s.close();
        s = sf.openSession();
        tx = s.beginTransaction();
        try {
            s.save(new Patient("Dup", "222-22-2222", null, null, null));
            tx.commit();
            put("duplicate ssn", "committed");
        } catch (ConstraintViolationException e) {
            tx.rollback();
            put("duplicate ssn", e.getSQLState());
        }
        s.close();
        s = sf.openSession();
        put("after transaction", s.createQuery("from HibernateCrud$Patient p where p.ssn in (:ssns) order by p.id")
            .setParameterList("ssns", Arrays.asList("111-11-1111", "222-22-2222")).list());
        s.close();

        // Upsert (native SQL: Hibernate has none), dirty checking, bulk HQL.
        s = sf.openSession();
        tx = s.beginTransaction();
        put("native upsert", s.createSQLQuery("INSERT INTO patients (name, ssn, diagnosis, notes, dob) VALUES (:n, :s, :d, :o, :b), (:n2, :s2, :d2, :o2, :b2) "
                + "ON CONFLICT (ssn) DO UPDATE SET diagnosis = EXCLUDED.diagnosis, notes = EXCLUDED.notes")
            .setParameter("n", "Ada").setParameter("s", "111-11-1111").setParameter("d", "pneumonia").setParameter("o", "upserted").setDate("b", date("1980-01-02"))
            .setParameter("n2", "Fay").setParameter("s2", "666-66-6666").setParameter("d2", "migraine").setParameter("o2", "new").setDate("b2", date("1990-09-09"))
            .executeUpdate());
        Patient cy = (Patient) s.createCriteria(Patient.class).add(Restrictions.eq("ssn", "333-33-3333")).uniqueResult();
        cy.diagnosis = "asthma, mild";
        cy.active = false;
        put("HQL update", s.createQuery("update HibernateCrud$Patient set notes = :n, diagnosis = :d where ssn = :s")
            .setParameter("n", "updated").setParameter("d", "cold").setParameter("s", "444-44-4444").executeUpdate());
        tx.commit();
        s.close();

        // Streaming: a forward-only scroll with a fetch size, in a
        // transaction (pgjdbc then reads the portal in batches).
        s = sf.openSession();
        tx = s.beginTransaction();
        ScrollableResults sr = s.createQuery("from HibernateCrud$Patient p where p.active = true order by p.id").setFetchSize(2).scroll(ScrollMode.FORWARD_ONLY);
        List<Object> streamed = new ArrayList<>();
        while (sr.next()) streamed.add(sr.get(0));
        sr.close();
        tx.commit();
        s.close();
        put("scroll", streamed);

        if (phi) {
            String[][] refusals = {
                {"hibernate HQL order by ssn", "from HibernateCrud$Patient p order by p.ssn"},
                {"hibernate HQL dob >", "from HibernateCrud$Patient p where p.dob > current_date"},
                {"hibernate HQL ssn like", "from HibernateCrud$Patient p where p.ssn like '111%'"},
            };
            for (String[] r : refusals) {
                s = sf.openSession();
                String state = "none";
                try {
                    s.createQuery(r[1]).list();
                } catch (HibernateException e) {
                    state = sqlstate(e);
                }
                s.close();
                System.out.println("{\"refused\":" + json(r[0]) + ",\"sqlstate\":" + json(state) + "}");
            }
        }
        sf.close();
    }
}
