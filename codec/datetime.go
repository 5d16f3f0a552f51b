package codec

import (
	"encoding/binary"
	"math"
	"strconv"
	"time"
)

// Dates and timestamps. The text parser accepts the ISO 8601 subset
// described in doc.go; output is PostgreSQL's ISO DateStyle. Internally a
// date is a day count and a timestamp a microsecond count from
// 2000-01-01, as on the wire.

const (
	pgEpochDays  = 10957 // 2000-01-01 − 1970-01-01 in days
	usecPerDay   = 86400 * 1000000
	dateMin      = -2451545             // 4714-11-24 BC (Julian day 0)
	dateEnd      = 2147483494 - 2451545 // 5874898-01-01, exclusive
	timestampMin = -211813488000000000  // 4714-11-24 00:00 BC
	timestampEnd = 9223371331200000000  // 294277-01-01 00:00, exclusive
	dateNegInf   = math.MinInt32
	datePosInf   = math.MaxInt32
	tsNegInf     = math.MinInt64
	tsPosInf     = math.MaxInt64
)

// civil is a parsed date/time.
type civil struct {
	inf              int // -1, 0, +1
	year, month, day int // astronomical year: 1 BC is 0
	hour, min, sec   int
	usec             int64
	hasTime, hasZone bool
	offset           int // seconds east of UTC
}

// parseCivil parses the accepted grammar:
//
//	ws* ( [+-]?infinity | epoch | DATE [ (ws+ | T) TIME [ ws* ZONE ] ] [ ws+ (BC|AD) ] ) ws*
//	DATE = YYYY+ '-' M[M] '-' D[D]
//	TIME = H[H] ':' MM [ ':' SS [ '.' F+ ] ]
//	ZONE = Z | UTC | GMT | [+-] H[H] [ [:] MM [ [:] SS ] ]
func parseCivil(src []byte, typ string) (civil, error) {
	var c civil
	if err := checkText(src); err != nil {
		return c, err
	}
	s := trimSpace(src)
	switch {
	case equalFold(s, "infinity") || equalFold(s, "+infinity"):
		c.inf = 1
		return c, nil
	case equalFold(s, "-infinity"):
		c.inf = -1
		return c, nil
	case equalFold(s, "epoch"):
		c.year, c.month, c.day = 1970, 1, 1
		return c, nil
	}
	bad := func() error { return datetimeSyntaxErr(typ) }
	num := func(minLen, maxLen int) (int, bool) {
		n, v := 0, 0
		for n < len(s) && isDigit(s[n]) {
			if n == maxLen {
				return 0, false
			}
			v = v*10 + int(s[n]-'0')
			n++
		}
		if n < minLen {
			return 0, false
		}
		s = s[n:]
		return v, true
	}
	expect := func(b byte) bool {
		if len(s) > 0 && s[0] == b {
			s = s[1:]
			return true
		}
		return false
	}
	var ok bool
	if c.year, ok = num(4, 9); !ok || !expect('-') {
		return c, bad()
	}
	if c.month, ok = num(1, 2); !ok || !expect('-') {
		return c, bad()
	}
	if c.day, ok = num(1, 2); !ok {
		return c, bad()
	}
	if len(s) > 0 && (s[0] == 'T' || s[0] == 't' || isSpace(s[0])) {
		rest := trimSpace(s[1:])
		if len(rest) > 0 && isDigit(rest[0]) {
			s = rest
			c.hasTime = true
			if c.hour, ok = num(1, 2); !ok || !expect(':') {
				return c, bad()
			}
			if c.min, ok = num(2, 2); !ok {
				return c, bad()
			}
			if expect(':') {
				if c.sec, ok = num(2, 2); !ok {
					return c, bad()
				}
				if expect('.') {
					n := 0
					for n < len(s) && isDigit(s[n]) {
						n++
					}
					// n may be 0: "03:04:05." is 03:04:05, as in PostgreSQL.
					// PostgreSQL: rint(strtod("0.fff") * 1e6); ParseFloat
					// rounds correctly, as strtod does.
					f, _ := strconv.ParseFloat("0."+string(s[:n])+"0", 64)
					c.usec = int64(math.RoundToEven(f * 1e6))
					s = s[n:]
				}
			}
			// Zone.
			s = skipSpace(s)
			switch {
			case len(s) > 0 && (s[0] == 'Z' || s[0] == 'z') && (len(s) == 1 || isSpace(s[1])):
				c.hasZone = true
				s = s[1:]
			case hasPrefixFold(s, "utc") || hasPrefixFold(s, "gmt"):
				if len(s) == 3 || isSpace(s[3]) {
					c.hasZone = true
					s = s[3:]
				}
			case len(s) > 0 && (s[0] == '+' || s[0] == '-'):
				off, err := parseSignedOffset(&s)
				if err {
					return c, bad()
				}
				c.hasZone, c.offset = true, off
			}
		} else if len(rest) > 0 && (rest[0] == '+' || rest[0] == '-') {
			// A zone right after the date ("1980-01-02 +00", as pgjdbc's
			// setDate sends it): PostgreSQL reads midnight in that zone.
			s = rest
			off, err := parseSignedOffset(&s)
			if err {
				return c, bad()
			}
			c.hasZone, c.offset = true, off
		}
	}
	if c.year == 0 {
		return c, fieldRangeErr(typ)
	}
	rest := trimSpace(s)
	switch {
	case equalFold(rest, "bc"):
		if c.year <= 0 {
			return c, fieldRangeErr(typ)
		}
		c.year = 1 - c.year
		s = nil
	case equalFold(rest, "ad"):
		s = nil
	case len(rest) == 0:
		s = nil
	}
	if len(s) != 0 {
		return c, bad()
	}
	if c.month < 1 || c.month > 12 || c.day < 1 || c.day > daysIn(c.year, c.month) ||
		c.hour > 24 || c.min > 59 || c.sec > 60 || (c.hour == 24 && (c.min > 0 || c.sec > 0 || c.usec > 0)) {
		return c, fieldRangeErr(typ)
	}
	return c, nil
}

// parseSignedOffset is parseOffset for an offset that starts with its
// sign ('+' or '-', which *s must start with): west of UTC is negative.
func parseSignedOffset(s *[]byte) (int, bool) {
	neg := (*s)[0] == '-'
	*s = (*s)[1:]
	off, err := parseOffset(s)
	if neg {
		off = -off
	}
	return off, err
}

// parseOffset parses H[H][[:]MM[[:]SS]] after the sign.
func parseOffset(s *[]byte) (int, bool) {
	t := *s
	n := 0
	for n < len(t) && isDigit(t[n]) {
		n++
	}
	d := func(b []byte) int {
		v := 0
		for _, x := range b {
			v = v*10 + int(x-'0')
		}
		return v
	}
	var h, m, sec int
	switch {
	case n == 1 || n == 2:
		h = d(t[:n])
		t = t[n:]
		if len(t) > 2 && t[0] == ':' && isDigit(t[1]) && isDigit(t[2]) {
			m = d(t[1:3])
			t = t[3:]
			if len(t) > 2 && t[0] == ':' && isDigit(t[1]) && isDigit(t[2]) {
				sec = d(t[1:3])
				t = t[3:]
			}
		}
	case n == 4:
		h, m = d(t[:2]), d(t[2:4])
		t = t[4:]
	case n == 6:
		h, m, sec = d(t[:2]), d(t[2:4]), d(t[4:6])
		t = t[6:]
	default:
		return 0, true
	}
	if len(t) > 0 && isDigit(t[0]) || h > 15 || m > 59 || sec > 59 {
		return 0, true
	}
	*s = t
	return h*3600 + m*60 + sec, false
}

func isLeap(y int) bool { return y%4 == 0 && (y%100 != 0 || y%400 == 0) }

func daysIn(y, m int) int {
	switch m {
	case 2:
		if isLeap(y) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns days since 1970-01-01 in the proleptic Gregorian
// calendar (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int64 {
	yy := int64(y)
	if m <= 2 {
		yy--
	}
	era := floorDiv(yy, 400)
	yoe := yy - era*400
	mp := int64((m + 9) % 12)
	doy := (153*mp+2)/5 + int64(d) - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

func civilFromDays(z int64) (y, m, d int) {
	z += 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	yy := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d = int(doy - (153*mp+2)/5 + 1)
	m = int(mp + 3)
	if m > 12 {
		m -= 12
	}
	if m <= 2 {
		yy++
	}
	return int(yy), m, d
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

// pgDays is the date as days since 2000-01-01.
func (c civil) pgDays() int64 { return daysFromCivil(c.year, c.month, c.day) - pgEpochDays }

// localUsec is the wall clock as microseconds since 2000-01-01 00:00.
func (c civil) localUsec() int64 {
	return c.pgDays()*usecPerDay + (int64(c.hour)*3600+int64(c.min)*60+int64(c.sec))*1000000 + c.usec
}

// zoneOffset is the UTC offset PostgreSQL assigns to a wall clock time in
// loc: in a spring-forward gap the offset before the transition, for an
// ambiguous fall-back time the offset after it (standard time).
func zoneOffset(local int64, loc *time.Location) int {
	at := func(unix int64) int {
		_, off := time.Unix(unix, 0).In(loc).Zone()
		return off
	}
	before, after := at(local-86400), at(local+86400)
	okB := at(local-int64(before)) == before
	okA := at(local-int64(after)) == after
	switch {
	case okA && okB:
		return after // ambiguous (or no transition): after
	case okA:
		return after
	case okB:
		return before
	}
	return before // gap
}

func dateIn(_ Codec, dst, src []byte) ([]byte, error) {
	c, err := parseCivil(src, "date")
	if err != nil {
		return nil, err
	}
	if c.inf != 0 {
		return appendInf(dst, c.inf), nil
	}
	days := c.pgDays()
	if days < dateMin || days >= dateEnd {
		return nil, outOfRangeErr("date")
	}
	return appendDate(dst, days), nil
}

func appendInf(dst []byte, inf int) []byte {
	if inf < 0 {
		return append(dst, "-infinity"...)
	}
	return append(dst, "infinity"...)
}

func appendPad(dst []byte, v, width int) []byte {
	var buf [12]byte
	i := len(buf)
	for v > 0 || len(buf)-i < width {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(dst, buf[i:]...)
}

func appendYMD(dst []byte, y, m, d int) ([]byte, bool) {
	bc := y <= 0
	if bc {
		y = 1 - y
	}
	dst = appendPad(dst, y, 4)
	dst = append(dst, '-')
	dst = appendPad(dst, m, 2)
	dst = append(dst, '-')
	dst = appendPad(dst, d, 2)
	return dst, bc
}

func appendDate(dst []byte, days int64) []byte {
	y, m, d := civilFromDays(days + pgEpochDays)
	dst, bc := appendYMD(dst, y, m, d)
	if bc {
		dst = append(dst, " BC"...)
	}
	return dst
}

// appendTimestamp formats a wall clock (usec since 2000-01-01) with an
// optional zone offset (seconds east) — PostgreSQL's ISO output.
func appendTimestamp(dst []byte, usec int64, withZone bool, offset int) []byte {
	days := floorDiv(usec, usecPerDay)
	rem := usec - days*usecPerDay
	y, m, d := civilFromDays(days + pgEpochDays)
	dst, bc := appendYMD(dst, y, m, d)
	secs := int(rem / 1000000)
	frac := int(rem % 1000000)
	dst = append(dst, ' ')
	dst = appendPad(dst, secs/3600, 2)
	dst = append(dst, ':')
	dst = appendPad(dst, secs/60%60, 2)
	dst = append(dst, ':')
	dst = appendPad(dst, secs%60, 2)
	if frac != 0 {
		n := 6
		for frac%10 == 0 {
			frac /= 10
			n--
		}
		dst = append(dst, '.')
		dst = appendPad(dst, frac, n)
	}
	if withZone {
		if offset >= 0 {
			dst = append(dst, '+')
		} else {
			dst = append(dst, '-')
			offset = -offset
		}
		h, m, s := offset/3600, offset/60%60, offset%60
		dst = appendPad(dst, h, 2)
		if m != 0 || s != 0 {
			dst = append(dst, ':')
			dst = appendPad(dst, m, 2)
		}
		if s != 0 {
			dst = append(dst, ':')
			dst = appendPad(dst, s, 2)
		}
	}
	if bc {
		dst = append(dst, " BC"...)
	}
	return dst
}

// usecOf parses text input into microseconds since 2000-01-01 UTC (for
// timestamptz) or wall clock (timestamp), with infinities as the int64
// sentinels.
func usecOf(c Codec, src []byte, tz bool) (int64, error) {
	typ := "timestamp without time zone"
	if tz {
		typ = "timestamp with time zone"
	}
	cv, err := parseCivil(src, typ)
	if err != nil {
		return 0, err
	}
	switch cv.inf {
	case 1:
		return tsPosInf, nil
	case -1:
		return tsNegInf, nil
	}
	if days := cv.pgDays(); days < dateMin || days >= dateEnd {
		return 0, outOfRangeErr(typ)
	}
	u := cv.localUsec()
	if tz {
		off := cv.offset
		if !cv.hasZone {
			loc := c.loc()
			if loc != time.UTC {
				off = zoneOffset(floorDiv(u, 1000000)+pgEpochDays*86400, loc)
			}
		}
		u -= int64(off) * 1000000
	}
	if u < timestampMin || u >= timestampEnd {
		return 0, outOfRangeErr(typ)
	}
	return u, nil
}

func timestampIn(c Codec, dst, src []byte) ([]byte, error) {
	u, err := usecOf(c, src, false)
	if err != nil {
		return nil, err
	}
	return appendTimestampValue(dst, u, false), nil
}

func timestamptzIn(c Codec, dst, src []byte) ([]byte, error) {
	u, err := usecOf(c, src, true)
	if err != nil {
		return nil, err
	}
	return appendTimestampValue(dst, u, true), nil
}

func appendTimestampValue(dst []byte, u int64, tz bool) []byte {
	switch u {
	case tsPosInf:
		return appendInf(dst, 1)
	case tsNegInf:
		return appendInf(dst, -1)
	}
	return appendTimestamp(dst, u, tz, 0)
}

func timestampRecvAny(dst, src []byte, tz bool) ([]byte, error) {
	typ := "timestamp"
	if len(src) != 8 {
		return nil, binaryErr(typ)
	}
	u := int64(binary.BigEndian.Uint64(src))
	if u != tsPosInf && u != tsNegInf && (u < timestampMin || u >= timestampEnd) {
		return nil, outOfRangeErr(typ)
	}
	return appendTimestampValue(dst, u, tz), nil
}

func timestampRecv(dst, src []byte) ([]byte, error)   { return timestampRecvAny(dst, src, false) }
func timestamptzRecv(dst, src []byte) ([]byte, error) { return timestampRecvAny(dst, src, true) }

// timestampSend serves timestamp and timestamptz: the canonical timestamptz
// carries +00, so the wall clock is the UTC instant.
func timestampSend(dst, canon []byte) ([]byte, error) {
	u, err := usecOf(Codec{}, canon, true)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(dst, uint64(u)), nil
}

// timestamptzOut converts a canonical (UTC) timestamptz to loc for text
// output, as PostgreSQL does for a session's TimeZone.
func timestamptzOut(dst, canon []byte, loc *time.Location) ([]byte, error) {
	u, err := usecOf(Codec{}, canon, true)
	if err != nil {
		return nil, err
	}
	if u == tsPosInf || u == tsNegInf {
		return appendTimestampValue(dst, u, true), nil
	}
	unix := floorDiv(u, 1000000) + pgEpochDays*86400
	_, off := time.Unix(unix, 0).In(loc).Zone()
	return appendTimestamp(dst, u+int64(off)*1000000, true, off), nil
}

func dateRecv(dst, src []byte) ([]byte, error) {
	if len(src) != 4 {
		return nil, binaryErr("date")
	}
	d := int32(binary.BigEndian.Uint32(src))
	switch {
	case d == datePosInf:
		return appendInf(dst, 1), nil
	case d == dateNegInf:
		return appendInf(dst, -1), nil
	case int64(d) < dateMin || int64(d) >= dateEnd:
		return nil, outOfRangeErr("date")
	}
	return appendDate(dst, int64(d)), nil
}

func dateSend(dst, canon []byte) ([]byte, error) {
	c, err := parseCivil(canon, "date")
	if err != nil {
		return nil, err
	}
	d := int32(c.pgDays())
	switch c.inf {
	case 1:
		d = datePosInf
	case -1:
		d = dateNegInf
	}
	return binary.BigEndian.AppendUint32(dst, uint32(d)), nil
}
