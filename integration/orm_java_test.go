package integration

import (
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Hibernate stack: Debian's libhibernate3-java (3.6) with pgjdbc,
// compiled once per package run.

// hibernateJars is the classpath Debian's packages install.
var hibernateJars = []string{
	"hibernate-core", "hibernate-commons-annotations", "geronimo-jpa_2.0_spec", "geronimo-jta-1.2-spec",
	"antlr", "commons-collections3", "dom4j", "javassist", "slf4j-api", "slf4j-nop", "postgresql",
}

var hibernateClasses perRun[string]

// hibernateClasspath compiles HibernateCrud once per package run and
// returns the classpath that runs it.
func hibernateClasspath(t *testing.T) string {
	t.Helper()
	return hibernateClasses.get(t, "javac HibernateCrud (is libhibernate3-java installed? make test installs it)", func() (string, error) {
		var jars []string
		for _, j := range hibernateJars {
			jars = append(jars, filepath.Join("/usr/share/java", j+".jar"))
		}
		dir := filepath.Join(fixture.work, "hibernate")
		cp := strings.Join(jars, ":")
		if out, err := exec.Command("javac", "-d", dir, "-cp", cp, "orm/java/HibernateCrud.java").CombinedOutput(); err != nil {
			return "", fmt.Errorf("%v\n%s", err, out)
		}
		return dir + ":" + cp, nil
	})
}

func runHibernate(t *testing.T, dsn string, phi bool) string {
	cp := hibernateClasspath(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	jdbcURL := "jdbc:postgresql://" + u.Host + u.Path + "?" + u.RawQuery
	return runCmd(t, "java", "-cp", cp, "HibernateCrud", jdbcURL, u.User.Username(), pw, ormMode(phi))
}
