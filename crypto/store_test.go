package crypto

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/phiproxy/phiproxy/config"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/daead/aessiv"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/signature/ed25519"
)

func TestRotateKeepsOldValuesReadable(t *testing.T) {
	for _, key := range []string{"public.patients.ssn", "public.patients.diagnosis"} {
		t.Run(key, func(t *testing.T) {
			kr, st := testRing(t)
			before := mustCipher(t, kr, key)
			old := mustEncrypt(t, before, []byte("before rotation"))
			newID, err := st.Rotate(ColumnKey(key))
			if err != nil {
				t.Fatal(err)
			}
			if newID == before.PrimaryKeyID() {
				t.Fatal("rotate kept the primary key id")
			}
			// Until the reload, the proxy keeps the old primary.
			if mustCipher(t, kr, key).PrimaryKeyID() != before.PrimaryKeyID() {
				t.Fatal("keys changed without a reload")
			}
			if err := kr.Reload(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			after := mustCipher(t, kr, key)
			if after.PrimaryKeyID() != newID {
				t.Fatalf("primary after reload %d, want %d", after.PrimaryKeyID(), newID)
			}
			fresh := mustEncrypt(t, after, []byte("after rotation"))
			if id, _ := EnvelopeKeyID(fresh); id != newID {
				t.Fatalf("new value under key id %d, want %d", id, newID)
			}
			for want, env := range map[string][]byte{"before rotation": old, "after rotation": fresh} {
				got, err := after.Decrypt(env)
				if err != nil || string(got) != want {
					t.Fatalf("Decrypt = %q, %v; want %q", got, err, want)
				}
			}
			// The cipher held across the reload still works for its values.
			if got, err := before.Decrypt(old); err != nil || string(got) != "before rotation" {
				t.Fatalf("old cipher: %q, %v", got, err)
			}
		})
	}
}

func TestRetire(t *testing.T) {
	kr, st := testRing(t)
	key := "public.patients.ssn"
	oldID := mustCipher(t, kr, key).PrimaryKeyID()
	old, _ := kr.Encrypt(key, []byte("123-45-6789"))

	if err := st.Retire(ColumnKey(key), oldID); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Fatalf("retiring the primary key: %v, want a refusal that says primary", err)
	}
	if err := st.Retire(ColumnKey(key), 12345); err == nil || !strings.Contains(err.Error(), "no key id 12345") {
		t.Fatalf("retiring an unknown key id: %v", err)
	}
	if _, err := st.Rotate(ColumnKey(key)); err != nil {
		t.Fatal(err)
	}
	if err := st.Retire(ColumnKey(key), oldID); err != nil {
		t.Fatal(err)
	}
	if err := st.Retire(ColumnKey(key), oldID); err == nil || !strings.Contains(err.Error(), "already retired") {
		t.Fatalf("retiring twice: %v", err)
	}
	if err := kr.Reload(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	_, err := kr.Decrypt(key, old)
	de := decryptErr(t, err)
	if de.Reason != RetiredKey || de.KeyID != oldID || de.RetiredAt.IsZero() {
		t.Fatalf("DecryptError %+v, want retired key %d", de, oldID)
	}
	msg := err.Error()
	for _, want := range []string{"public.patients.ssn", "public.visits.patient_ssn", strconv.FormatUint(uint64(oldID), 10), "retired"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
	ki, err := st.Load(ColumnKey(key))
	if err != nil {
		t.Fatal(err)
	}
	var statuses []string
	for _, k := range ki.Keys {
		statuses = append(statuses, k.Status)
	}
	if got := strings.Join(statuses, ","); got != "primary,retired" {
		t.Fatalf("statuses %s, want primary,retired", got)
	}
}

func TestKEKFileChecks(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.json")
	created, err := InitFileKEK(path)
	if err != nil || !created {
		t.Fatalf("InitFileKEK = %v, %v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode %v, %v; want 0600", fi.Mode(), err)
	}
	orig, _ := os.ReadFile(path)
	if created, err := InitFileKEK(path); err != nil || created {
		t.Fatalf("second InitFileKEK = %v, %v; want kept", created, err)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, orig) {
		t.Fatal("InitFileKEK overwrote an existing KEK")
	}
	tests := []struct {
		name    string
		mode    os.FileMode
		uid     int
		wantErr string
	}{
		{"mode 0600 owned by the running user is accepted", 0o600, os.Getuid(), ""},
		{"mode 0400 is accepted", 0o400, os.Getuid(), ""},
		{"mode 0644 is refused", 0o644, os.Getuid(), "mode 0644"},
		{"mode 0640 is refused", 0o640, os.Getuid(), "chmod 600"},
		{"mode 0602 is refused", 0o602, os.Getuid(), "group or others"},
		{"a file owned by another user is refused", 0o600, os.Getuid() + 1, "owned by uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			err := checkKEKFile(path, tt.uid)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("err = %v, want one naming %s and containing %q", err, path, tt.wantErr)
			}
		})
	}
	// The real entry points refuse it too, and so does the proxy.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKEK(context.Background(), "file:"+path, Env{}); err == nil || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("OpenKEK on a 0644 file: %v", err)
	}
	cfg := writeConfig(t, dir, "file:kek.json", "")
	if _, err := Open(context.Background(), cfg, Options{}); err == nil || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("Open with a 0644 KEK: %v", err)
	}
	if _, err := OpenKEK(context.Background(), "file:"+filepath.Join(dir, "nope.json"), Env{}); err == nil || !strings.Contains(err.Error(), "keys init") {
		t.Fatalf("missing KEK: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenKEK(context.Background(), "file:"+filepath.Join(dir, "bad.json"), Env{}); err == nil || !strings.Contains(err.Error(), "not a Tink JSON keyset") {
		t.Fatalf("garbage KEK: %v", err)
	}
}

func TestCorruptedKeysetFile(t *testing.T) {
	key := "public.patients.ssn"
	tests := []struct {
		name    string
		mangle  func(t *testing.T, cfg *config.Config, path string)
		wantErr string
	}{
		{"a truncated file is reported as corrupted", func(t *testing.T, _ *config.Config, path string) {
			data, _ := os.ReadFile(path)
			write(t, path, data[:len(data)/2])
		}, "is corrupted"},
		{"an empty file is reported as corrupted", func(t *testing.T, _ *config.Config, path string) {
			write(t, path, nil)
		}, "is corrupted"},
		{"an altered encrypted keyset does not decrypt", func(t *testing.T, _ *config.Config, path string) {
			doc := readDoc(t, path)
			var ks map[string]any
			if err := json.Unmarshal(doc.Keyset, &ks); err != nil {
				t.Fatal(err)
			}
			raw, _ := base64.StdEncoding.DecodeString(ks["encryptedKeyset"].(string))
			raw[len(raw)/2] ^= 1
			ks["encryptedKeyset"] = base64.StdEncoding.EncodeToString(raw)
			doc.Keyset, _ = json.Marshal(ks)
			writeDoc(t, path, doc)
		}, "cannot decrypt keyset file"},
		{"a keyset file renamed to another key is refused", func(t *testing.T, cfg *config.Config, path string) {
			other := filepath.Join(cfg.Keys.Dir, ColumnKey("public.patients.diagnosis").fileName())
			data, _ := os.ReadFile(other)
			write(t, path, data)
		}, "was it renamed"},
		{"a mode edited in the file does not decrypt", func(t *testing.T, _ *config.Config, path string) {
			doc := readDoc(t, path)
			doc.Mode = "randomized"
			writeDoc(t, path, doc)
		}, "cannot decrypt keyset file"},
		{"an unknown format is refused", func(t *testing.T, _ *config.Config, path string) {
			doc := readDoc(t, path)
			doc.Format = "phiproxy-keyset/9"
			writeDoc(t, path, doc)
		}, "has format"},
		{"another KEK cannot read the keysets", func(t *testing.T, cfg *config.Config, _ string) {
			kek := strings.TrimPrefix(cfg.Keys.KEK, "file:")
			if err := os.Remove(kek); err != nil {
				t.Fatal(err)
			}
			if _, err := InitFileKEK(kek); err != nil {
				t.Fatal(err)
			}
		}, "wrong KEK"},
		{"a missing keyset says how to create it", func(t *testing.T, _ *config.Config, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, "keys create"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := setup(t, testPHI)
			path := filepath.Join(cfg.Keys.Dir, ColumnKey(key).fileName())
			tt.mangle(t, cfg, path)
			_, err := Open(context.Background(), cfg, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), key) {
				t.Fatalf("Open: %v; want an error naming %s and containing %q", err, key, tt.wantErr)
			}
		})
	}
}

func TestReloadFailureKeepsKeys(t *testing.T) {
	cfg, _ := setup(t, testPHI)
	kr := openRing(t, cfg)
	env, _ := kr.Encrypt("public.patients.ssn", []byte("x"))
	write(t, filepath.Join(cfg.Keys.Dir, ColumnKey("public.patients.ssn").fileName()), []byte("garbage"))
	if err := kr.Reload(context.Background(), nil); err == nil {
		t.Fatal("Reload of a corrupted keyset succeeded")
	}
	if pt, err := kr.Decrypt("public.patients.ssn", env); err != nil || string(pt) != "x" {
		t.Fatalf("after a failed reload: %q, %v", pt, err)
	}
}

func TestModeMismatchIsRefused(t *testing.T) {
	cfg, st := setup(t, testPHI)
	if _, err := st.Create(ColumnKey("public.patients.ssn"), "randomized"); err == nil || !strings.Contains(err.Error(), "mode cannot change") {
		t.Fatalf("Create with another mode: %v", err)
	}
	changed := writeConfig(t, filepath.Dir(cfg.Path), "", "phi:\n  public.patients:\n    ssn: {type: text, mode: randomized}\n")
	if _, err := Open(context.Background(), changed, Options{}); err == nil || !strings.Contains(err.Error(), "mode cannot change") {
		t.Fatalf("Open with another mode: %v", err)
	}
}

// TestNoCleartextKeyOnDisk reads every key's bytes from memory and looks
// for them, raw, hex and base64, in every file phiproxy wrote apart from
// the KEK file.
func TestNoCleartextKeyOnDisk(t *testing.T) {
	cfg, st := setup(t, testPHI)
	if _, err := st.Rotate(ColumnKey("public.patients.diagnosis")); err != nil {
		t.Fatal(err)
	}
	kek := mustKEK(t, cfg.Keys.KEK)
	var secrets [][]byte
	for _, r := range []Ref{ColumnKey("public.patients.ssn"), ColumnKey("public.patients.diagnosis"), ColumnKey("visit notes/v1"), SigningKey()} {
		l, err := readKeyset(cfg.Keys.Dir, r, kek)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < l.handle.Len(); i++ {
			e, _ := l.handle.Entry(i)
			switch k := e.Key().(type) {
			case *aesgcm.Key:
				secrets = append(secrets, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
			case *aessiv.Key:
				secrets = append(secrets, k.KeyBytes().Data(insecuresecretdataaccess.Token{}))
			case *ed25519.PrivateKey:
				secrets = append(secrets, k.PrivateKeyBytes().Data(insecuresecretdataaccess.Token{}))
			default:
				t.Fatalf("unexpected key %T", k)
			}
		}
	}
	if len(secrets) != 5 {
		t.Fatalf("%d keys, want 5", len(secrets))
	}
	ents, err := os.ReadDir(cfg.Keys.Dir)
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, e := range ents {
		path := filepath.Join(cfg.Keys.Dir, e.Name())
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
		data, _ := os.ReadFile(path)
		for _, s := range secrets {
			for _, form := range [][]byte{s, []byte(hex.EncodeToString(s)), []byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawStdEncoding.EncodeToString(s[:24]))} {
				if bytes.Contains(data, form) {
					t.Fatalf("%s holds cleartext key material", e.Name())
				}
			}
		}
		files++
	}
	if files != 5 { // four keysets and .lock
		t.Fatalf("%d files in keys dir, want 5", files)
	}
	if fi, _ := os.Stat(cfg.Keys.Dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("keys dir mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestList(t *testing.T) {
	_, st := setup(t, testPHI)
	id2, err := st.Rotate(ColumnKey("public.patients.diagnosis"))
	if err != nil {
		t.Fatal(err)
	}
	list, err := st.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ks := range list {
		var keys []string
		for _, k := range ks.Keys {
			if k.Created.IsZero() {
				t.Errorf("%s key %d has no creation time", ks.Ref, k.ID)
			}
			keys = append(keys, k.Status)
		}
		got = append(got, ks.Ref.Name()+"/"+ks.Mode+"/"+strings.Join(keys, "+"))
		if ks.Ref.Name() == "public.patients.diagnosis" && ks.Primary() != id2 {
			t.Errorf("primary %d, want %d", ks.Primary(), id2)
		}
	}
	want := "audit-signing//primary public.patients.diagnosis/randomized/enabled+primary public.patients.ssn/deterministic/primary visit notes/v1/randomized/primary"
	if g := strings.Join(got, " "); g != want {
		t.Fatalf("List:\n got %s\nwant %s", g, want)
	}
	// Files that are not keysets are passed over; a keys.dir that does
	// not exist yet lists nothing.
	if err := os.WriteFile(filepath.Join(st.Dir(), "notes.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if again, err := st.List(); err != nil || len(again) != len(list) {
		t.Errorf("List with a stray file: %d keysets, %v; want %d", len(again), err, len(list))
	}
	none := &Store{dir: filepath.Join(t.TempDir(), "keys"), kek: st.kek}
	if l, err := none.List(); l != nil || err != nil {
		t.Errorf("List without keys.dir = %v, %v; want nothing", l, err)
	}
}

func TestConcurrentUseDuringReload(t *testing.T) {
	kr, st := testRing(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, key := range []string{"public.patients.ssn", "public.patients.diagnosis"} {
					env, err := kr.Encrypt(key, []byte("value"))
					if err == nil {
						var pt []byte
						pt, err = kr.Decrypt(key, env)
						if err == nil && string(pt) != "value" {
							err = os.ErrInvalid
						}
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	for i := 0; i < 5; i++ {
		if _, err := st.Rotate(ColumnKey("public.patients.diagnosis")); err != nil {
			t.Error(err)
		}
		if err := kr.Reload(context.Background(), nil); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readDoc(t *testing.T, path string) fileDoc {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc fileDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func writeDoc(t *testing.T, path string, doc fileDoc) {
	t.Helper()
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	write(t, path, data)
}

// TestInitKeys: InitKeys makes the KEK file and every keyset of the
// config, the signing keyset included, and a second run keeps them all.
func TestInitKeys(t *testing.T) {
	ctx := context.Background()
	cfg := writeConfig(t, t.TempDir(), "", testPHI)
	refs := []Ref{SigningKey(), ColumnKey("public.patients.ssn"), ColumnKey("public.patients.diagnosis"), ColumnKey("visit notes/v1")}
	primaries := func() []uint32 {
		t.Helper()
		st, err := OpenStore(ctx, cfg.Keys, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint32
		for _, r := range refs {
			ki, err := st.Load(r)
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			ids = append(ids, ki.Primary())
		}
		return ids
	}
	if err := InitKeys(ctx, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	first := primaries()
	if err := InitKeys(ctx, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	for i, id := range primaries() {
		if id != first[i] {
			t.Fatalf("a second InitKeys replaced %s (primary %d, was %d)", refs[i], id, first[i])
		}
	}
}
