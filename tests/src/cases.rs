//! Generated cases for the fidelity property tests: one case is one row in one table
//! of [`SCHEMA`], written as SQL text literals under the case's own writer settings.
//! Strategies cover PostgreSQL's whole range of each type, a boundary set, inputs
//! with 7–9 fractional digits (exact halves included) and an era-flipping mirror.

use proptest::prelude::*;
use proptest::sample::select;

/// Time zones drawn for every role: fractional and historic offsets.
pub const ZONES: [&str; 6] = [
    "UTC",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Europe/Berlin",
];
/// DateStyle values.
pub const DATESTYLES: [&str; 6] = [
    "ISO, MDY",
    "ISO, DMY",
    "SQL, DMY",
    "SQL, MDY",
    "Postgres, YMD",
    "German, DMY",
];
/// IntervalStyle values.
pub const INTERVALSTYLES: [&str; 4] = ["postgres", "postgres_verbose", "sql_standard", "iso_8601"];

/// The tables cases are written into. `fid_gen.day` is a STORED generated column
/// computed by a function declared IMMUTABLE that follows TimeZone: a restore under
/// another zone recomputes it differently, a real loss.
pub const SCHEMA: &str = r#"
CREATE TYPE fid_comp AS (at timestamptz, f float8, n numeric, s text, iv interval);
CREATE TABLE fid_time (id bigint PRIMARY KEY, ts timestamp, tstz timestamptz,
  tstz_mirror timestamptz, d date, t time, ttz timetz, iv interval);
CREATE TABLE fid_num (id bigint PRIMARY KEY, f4 float4, f8 float8, n numeric);
CREATE TABLE fid_text (id bigint PRIMARY KEY, s text, j jsonb, js json, b bytea);
CREATE TABLE fid_arr (id bigint PRIMARY KEY, tss timestamptz[], fs float8[], ns numeric[],
  ss text[], c fid_comp, cs fid_comp[]);
CREATE TABLE fid_part (id bigint, at timestamptz NOT NULL, v text, PRIMARY KEY (id, at))
  PARTITION BY RANGE (at);
CREATE TABLE fid_part_old PARTITION OF fid_part FOR VALUES FROM (MINVALUE) TO ('1900-01-01 00:00+00');
CREATE TABLE fid_part_new PARTITION OF fid_part FOR VALUES FROM ('1900-01-01 00:00+00') TO ('2100-01-01 00:00+00');
CREATE TABLE fid_part_rest PARTITION OF fid_part DEFAULT;
CREATE FUNCTION fid_local_day(timestamptz) RETURNS text LANGUAGE sql IMMUTABLE
  AS $$ SELECT to_char($1, 'YYYY-MM-DD BC') $$;
CREATE TABLE fid_gen (id bigint PRIMARY KEY, at timestamptz, wrote_in text,
  day text GENERATED ALWAYS AS (fid_local_day(at)) STORED);
"#;

/// The table whose loss depends on restore-time settings (see [`SCHEMA`]).
pub const GENERATED_TABLE: &str = "public.fid_gen";

/// The writer's session for one row.
#[derive(Clone, Debug)]
pub struct Writer {
    /// TimeZone.
    pub tz: &'static str,
    /// DateStyle.
    pub datestyle: &'static str,
    /// IntervalStyle.
    pub intervalstyle: &'static str,
    /// client_encoding (the literal's bytes are UTF-8 whatever it says).
    pub encoding: &'static str,
}

impl Writer {
    /// The SET statements, client_encoding last (it must be sent on its own, before
    /// the statement it applies to).
    pub fn sets(&self) -> (String, String) {
        (
            format!(
                "SET TimeZone = '{}'; SET DateStyle = '{}'; SET IntervalStyle = '{}';",
                self.tz, self.datestyle, self.intervalstyle
            ),
            format!("SET client_encoding = '{}';", self.encoding),
        )
    }
}

fn writer() -> impl Strategy<Value = Writer> {
    (
        select(&ZONES[..]),
        select(&DATESTYLES[..]),
        select(&INTERVALSTYLES[..]),
        prop_oneof![6 => Just("UTF8"), 1 => Just("LATIN1"), 1 => Just("WIN1252")],
    )
        .prop_map(|(tz, datestyle, intervalstyle, encoding)| Writer {
            tz,
            datestyle,
            intervalstyle,
            encoding,
        })
}

/// A calendar moment as typed: fields, fractional digits as written, an optional
/// UTC offset in seconds east.
#[derive(Clone, Debug)]
pub struct Moment {
    bc: bool,
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    frac: String,
    offset: Option<i32>,
}

/// A timestamp input.
#[derive(Clone, Debug)]
pub enum Ts {
    /// `infinity`.
    Infinity,
    /// `-infinity`.
    NegInfinity,
    /// A moment.
    At(Moment),
}

fn offset_text(secs: i32) -> String {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    if a.is_multiple_of(60) {
        format!("{sign}{:02}:{:02}", a / 3600, a / 60 % 60)
    } else {
        format!("{sign}{:02}:{:02}:{:02}", a / 3600, a / 60 % 60, a % 60)
    }
}

fn frac_text(frac: &str) -> String {
    if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    }
}

impl Moment {
    fn date_text(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    fn text(&self) -> String {
        format!(
            "{} {:02}:{:02}:{:02}{}{}{}",
            self.date_text(),
            self.hour,
            self.minute,
            self.second,
            frac_text(&self.frac),
            self.offset.map(offset_text).unwrap_or_default(),
            if self.bc { " BC" } else { "" }
        )
    }
}

impl Ts {
    /// The same fields in the other era (44 AD ↔ 44 BC).
    pub fn mirrored(&self) -> Self {
        match self {
            Ts::At(m) => Ts::At(Moment {
                bc: !m.bc,
                year: m.year.min(4713),
                ..m.clone()
            }),
            Ts::Infinity => Ts::NegInfinity,
            Ts::NegInfinity => Ts::Infinity,
        }
    }

    /// A literal of type `typ` (timestamp, timestamptz or date).
    pub fn literal(&self, typ: &str) -> String {
        let text = match self {
            Ts::Infinity => "infinity".to_owned(),
            Ts::NegInfinity => "-infinity".to_owned(),
            Ts::At(m) if typ == "date" => {
                format!("{}{}", m.date_text(), if m.bc { " BC" } else { "" })
            }
            Ts::At(m) => m.text(),
        };
        format!("'{text}'::{typ}")
    }
}

#[allow(clippy::too_many_arguments)]
fn m(
    bc: bool,
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    frac: &str,
    offset: Option<i32>,
) -> Ts {
    Ts::At(Moment {
        bc,
        year,
        month,
        day,
        hour,
        minute,
        second,
        frac: frac.to_owned(),
        offset,
    })
}

/// The boundary set: range ends, era edges, epochs, 2038, leap days, DST gaps and
/// overlaps (local times: the writer's zone decides), local-mean-time dates, halves.
fn boundary_ts() -> Vec<Ts> {
    let utc = Some(0);
    vec![
        Ts::Infinity,
        Ts::NegInfinity,
        m(true, 4714, 11, 24, 0, 0, 0, "", utc),
        m(true, 4713, 1, 1, 0, 0, 0, "", utc),
        m(false, 294276, 12, 31, 23, 59, 59, "999999", utc),
        m(false, 294276, 12, 31, 23, 59, 59, "999999", None),
        m(true, 1, 12, 31, 23, 59, 59, "999999", utc),
        m(false, 1, 1, 1, 0, 0, 0, "", utc),
        m(true, 1, 2, 29, 12, 0, 0, "", None),
        m(true, 44, 3, 15, 12, 0, 0, "", utc),
        m(false, 44, 3, 15, 12, 0, 0, "", utc),
        m(false, 1970, 1, 1, 0, 0, 0, "", utc),
        m(false, 1969, 12, 31, 23, 59, 59, "999999", utc),
        m(false, 2000, 1, 1, 0, 0, 0, "", utc),
        m(false, 1999, 12, 31, 23, 59, 59, "9999995", utc),
        m(false, 2038, 1, 19, 3, 14, 7, "", utc),
        m(false, 2038, 1, 19, 3, 14, 8, "", utc),
        m(false, 2000, 2, 29, 0, 0, 0, "", None),
        m(false, 2024, 2, 29, 23, 59, 59, "", None),
        m(false, 1900, 2, 28, 23, 59, 59, "", None),
        m(false, 9999, 12, 31, 23, 59, 59, "999999", None),
        m(false, 10000, 1, 1, 0, 0, 0, "", None),
        // DST gaps and overlaps, local.
        m(false, 2026, 3, 29, 2, 30, 0, "", None),
        m(false, 2026, 10, 25, 2, 30, 0, "", None),
        m(false, 2026, 10, 4, 2, 15, 0, "", None),
        m(false, 2026, 4, 5, 1, 45, 0, "", None),
        m(false, 2026, 9, 27, 2, 50, 0, "", None),
        m(false, 2026, 4, 5, 3, 15, 0, "", None),
        m(false, 2026, 3, 8, 2, 30, 0, "", None),
        m(false, 2026, 11, 1, 1, 30, 0, "", None),
        // Local mean time before standard zones.
        m(false, 1850, 6, 1, 12, 0, 0, "", None),
        m(false, 1893, 3, 31, 23, 59, 59, "", None),
        m(false, 1919, 12, 31, 23, 59, 59, "", None),
        m(false, 1868, 11, 2, 0, 0, 0, "", None),
        m(
            false,
            1600,
            1,
            1,
            0,
            0,
            0,
            "",
            Some(5 * 3600 + 41 * 60 + 16),
        ),
        // Seven to nine fractional digits, exact halves.
        m(false, 2001, 1, 1, 0, 0, 0, "0000005", utc),
        m(false, 2001, 1, 1, 0, 0, 0, "0000015", utc),
        m(false, 2001, 1, 1, 0, 0, 0, "00000050", utc),
        m(false, 2001, 1, 1, 0, 0, 0, "000000500", utc),
        m(true, 100, 1, 1, 0, 0, 0, "0000025", utc),
        m(false, 2001, 1, 1, 23, 59, 59, "9999995", None),
    ]
}

fn frac() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9]{0,6}",
        1 => "[0-9]{6}5(0{0,2})",
        1 => "[0-9]{7,9}",
    ]
}

fn offset() -> impl Strategy<Value = Option<i32>> {
    prop_oneof![
        2 => Just(None),
        2 => (-15 * 4..=15 * 4).prop_map(|q| Some(q * 15 * 60)),
        1 => (-15 * 3600..=15 * 3600).prop_map(Some),
    ]
}

fn uniform_ts(min_year_modern: bool) -> impl Strategy<Value = Ts> {
    let year = if min_year_modern {
        (1800u32..2100).boxed()
    } else {
        prop_oneof![1u32..=294276, 1u32..10000, 1800u32..2100].boxed()
    };
    (
        prop::bool::weighted(0.2),
        year,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        frac(),
        offset(),
    )
        .prop_map(
            |(bc, year, month, day, hour, minute, second, frac, offset)| {
                Ts::At(Moment {
                    bc,
                    year: if bc { year.min(4713) } else { year },
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    frac,
                    offset,
                })
            },
        )
}

/// Any timestamp input: uniform over the range, modern, the boundary set; a quarter
/// of them mirrored into the other era.
pub fn ts() -> impl Strategy<Value = Ts> {
    let base = prop_oneof![
        4 => uniform_ts(false),
        2 => uniform_ts(true),
        3 => select(boundary_ts()),
    ];
    (base, prop::bool::weighted(0.25)).prop_map(|(t, flip)| if flip { t.mirrored() } else { t })
}

/// A time of day, optionally with an offset (for timetz; without one the writer's
/// zone's current offset applies).
#[derive(Clone, Debug)]
pub struct Clock {
    hour: u32,
    minute: u32,
    second: u32,
    frac: String,
    offset: Option<i32>,
}

impl Clock {
    fn literal(&self, typ: &str) -> String {
        let off = if typ == "timetz" {
            self.offset.map(offset_text).unwrap_or_default()
        } else {
            String::new()
        };
        format!(
            "'{:02}:{:02}:{:02}{}{off}'::{typ}",
            self.hour,
            self.minute,
            self.second,
            frac_text(&self.frac)
        )
    }
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        5 => (0u32..24, 0u32..60, 0u32..60, frac(), prop_oneof![
            Just(None),
            (-(15 * 3600 + 59 * 60)..=(15 * 3600 + 59 * 60)).prop_map(Some),
        ]).prop_map(|(hour, minute, second, frac, offset)| Clock { hour, minute, second, frac, offset }),
        1 => select(vec![
            Clock { hour: 24, minute: 0, second: 0, frac: String::new(), offset: Some(0) },
            Clock { hour: 23, minute: 59, second: 59, frac: "9999995".into(), offset: Some(-(15 * 3600 + 59 * 60)) },
            Clock { hour: 0, minute: 0, second: 0, frac: String::new(), offset: Some(15 * 3600 + 59 * 60) },
            Clock { hour: 12, minute: 0, second: 0, frac: "0000005".into(), offset: None },
        ]),
    ]
}

/// An interval input in one of the four styles PostgreSQL reads.
#[derive(Clone, Debug)]
pub struct Iv {
    years: i32,
    months: i32,
    days: i32,
    hours: i64,
    minutes: i32,
    seconds: i32,
    frac: String,
    style: u8,
    ago: bool,
}

impl Iv {
    fn literal(&self) -> String {
        let sec_sign = if self.seconds < 0 { "-" } else { "" };
        let secs = format!(
            "{sec_sign}{}{}",
            self.seconds.unsigned_abs(),
            frac_text(&self.frac)
        );
        let text = match self.style {
            0 => format!(
                "{} years {} mons {} days {}{}:{:02}:{:02}{}",
                self.years,
                self.months,
                self.days,
                if self.hours < 0 { "-" } else { "+" },
                self.hours.unsigned_abs(),
                self.minutes.unsigned_abs(),
                self.seconds.unsigned_abs(),
                frac_text(&self.frac)
            ),
            1 => format!(
                "@ {} years {} mons {} days {} hours {} mins {secs} secs{}",
                self.years,
                self.months,
                self.days,
                self.hours,
                self.minutes,
                if self.ago { " ago" } else { "" }
            ),
            2 => format!(
                "{}{}-{} {} {}:{:02}:{:02}{}",
                if self.years < 0 { "-" } else { "" },
                self.years.unsigned_abs(),
                self.months.unsigned_abs() % 12,
                self.days,
                self.hours,
                self.minutes.unsigned_abs(),
                self.seconds.unsigned_abs(),
                frac_text(&self.frac)
            ),
            _ => format!(
                "P{}Y{}M{}DT{}H{}M{secs}S",
                self.years, self.months, self.days, self.hours, self.minutes
            ),
        };
        format!("'{text}'::interval")
    }
}

fn iv() -> impl Strategy<Value = Iv> {
    (
        prop_oneof![3 => -100i32..100, 1 => -178_000_000i32..178_000_000],
        -11i32..12,
        prop_oneof![3 => -40i32..40, 1 => -1_000_000i32..1_000_000],
        prop_oneof![3 => -48i64..48, 1 => -2_000_000_000i64..2_000_000_000],
        0i32..60,
        -59i32..60,
        frac(),
        0u8..4,
        any::<bool>(),
    )
        .prop_map(
            |(years, months, days, hours, minutes, seconds, frac, style, ago)| Iv {
                years,
                months,
                days,
                hours,
                minutes,
                seconds,
                frac,
                style,
                ago,
            },
        )
}

/// A float8 input.
#[derive(Clone, Debug)]
pub enum F8 {
    /// A non-NaN value by its bits.
    Bits(u64),
    /// `'NaN'`: the canonical NaN.
    NaN,
    /// `'Infinity' - 'Infinity'`: the NaN with the sign bit.
    SignNaN,
    /// `-'NaN'`.
    NegNaN,
}

impl F8 {
    /// The literal, cast to float8.
    pub fn literal(&self) -> String {
        match self {
            F8::NaN => "'NaN'::float8".into(),
            F8::SignNaN => "('Infinity'::float8 - 'Infinity'::float8)".into(),
            F8::NegNaN => "(-'NaN'::float8)".into(),
            F8::Bits(b) => {
                let f = f64::from_bits(*b);
                if f.is_infinite() {
                    format!("'{}Infinity'::float8", if f < 0.0 { "-" } else { "" })
                } else {
                    format!("'{f:e}'::float8")
                }
            }
        }
    }
}

fn f8() -> impl Strategy<Value = F8> {
    let special: Vec<u64> = [
        0.0f64,
        -0.0,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        f64::from_bits(0x000f_ffff_ffff_ffff),
        f64::MAX,
        f64::MIN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.1 + 0.2,
        1.0,
        f64::EPSILON,
    ]
    .iter()
    .map(|f| f.to_bits())
    .collect();
    prop_oneof![
        4 => any::<u64>().prop_filter("not NaN", |b| !f64::from_bits(*b).is_nan()).prop_map(F8::Bits),
        3 => select(special).prop_map(F8::Bits),
        1 => Just(F8::NaN),
        1 => Just(F8::SignNaN),
        1 => Just(F8::NegNaN),
    ]
}

fn f4_literal(v: &F8) -> String {
    match v {
        F8::Bits(b) => {
            let f = f32::from_bits(*b as u32);
            if f.is_nan() {
                "'NaN'::float4".into()
            } else if f.is_infinite() {
                format!("'{}Infinity'::float4", if f < 0.0 { "-" } else { "" })
            } else {
                format!("'{f:e}'::float4")
            }
        }
        F8::NaN => "'NaN'::float4".into(),
        F8::SignNaN => "('Infinity'::float4 - 'Infinity'::float4)".into(),
        F8::NegNaN => "(-'NaN'::float4)".into(),
    }
}

fn f4() -> impl Strategy<Value = F8> {
    let special: Vec<u64> = [
        0.0f32,
        -0.0,
        f32::MIN_POSITIVE,
        1e-45,
        -1e-45,
        f32::from_bits(0x007f_ffff),
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.1,
    ]
    .iter()
    .map(|f| u64::from(f.to_bits()))
    .collect();
    prop_oneof![
        4 => any::<u32>().prop_filter("not NaN", |b| !f32::from_bits(*b).is_nan()).prop_map(|b| F8::Bits(b.into())),
        3 => select(special).prop_map(F8::Bits),
        1 => Just(F8::NaN),
        1 => Just(F8::SignNaN),
        1 => Just(F8::NegNaN),
    ]
}

/// A numeric input.
#[derive(Clone, Debug)]
pub enum Num {
    /// NaN.
    NaN,
    /// Infinity.
    Inf,
    /// -Infinity.
    NegInf,
    /// sign, integer digits, fraction digits (trailing zeros kept: they are scale).
    Dec(bool, String, String),
}

impl Num {
    /// The literal, cast to numeric.
    pub fn literal(&self) -> String {
        let text = match self {
            Num::NaN => "NaN".to_owned(),
            Num::Inf => "Infinity".to_owned(),
            Num::NegInf => "-Infinity".to_owned(),
            Num::Dec(neg, int, frac) => format!(
                "{}{}{}{}",
                if *neg { "-" } else { "" },
                if int.is_empty() { "0" } else { int },
                if frac.is_empty() { "" } else { "." },
                frac
            ),
        };
        format!("'{text}'::numeric")
    }
}

fn num(huge: bool) -> impl Strategy<Value = Num> {
    let int = if huge {
        prop_oneof![3 => "[0-9]{0,30}", 1 => (1usize..1000).prop_map(|n| "9".repeat(n))].boxed()
    } else {
        "[0-9]{0,20}".boxed()
    };
    let frac = if huge {
        prop_oneof![
            3 => "[0-9]{0,30}",
            1 => "[0-9]{0,5}0{1,10}",
            1 => (1usize..16383).prop_map(|n| format!("{}1", "0".repeat(n - 1))),
        ]
        .boxed()
    } else {
        "[0-9]{0,12}".boxed()
    };
    prop_oneof![
        8 => (any::<bool>(), int, frac).prop_map(|(n, i, f)| Num::Dec(n, i, f)),
        1 => Just(Num::NaN),
        1 => Just(Num::Inf),
        1 => Just(Num::NegInf),
    ]
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Text with delimiters, escapes, COPY markers and non-BMP characters.
pub fn text() -> impl Strategy<Value = String> {
    let specials = vec![
        '\t',
        '\n',
        '\r',
        '\\',
        '\'',
        '"',
        ',',
        '{',
        '}',
        '|',
        '.',
        'N',
        'é',
        'ß',
        '€',
        '😀',
        '𝄞',
        '\u{10FFFF}',
        '\u{FEFF}',
        '\u{FFFD}',
        '\u{80}',
        '\u{9d}',
    ];
    prop_oneof![
        6 => prop::collection::vec(
            prop_oneof![
                2 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
                3 => select(specials),
            ],
            0..24,
        ).prop_map(|v| v.into_iter().collect::<String>()),
        1 => select(vec!["", "\\.", "\\.\n", "a\n\\.\nb", "\\N", "NULL", "\\\\N", "\t", "\r\n", "{\"a\",NULL}"])
            .prop_map(str::to_owned),
    ]
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "1e308",
            "-1e308",
            "1e-400",
            "1E+1000",
            "-0",
            "-0.0e-5",
            "0.0000",
            "123456789012345678901234567890.123456789e100",
            "5e-324",
            "1.7976931348623157e308",
            "9007199254740993",
            "-9223372036854775809",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|i| i.to_string()),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "\"\\ud83d\\ude00\"",
            "\"\\u00e9\"",
            "\"tab\\there\"",
            "\"back\\\\slash\"",
            "\"\\\"q\\\"\"",
            "\"😀\"",
            "\"\"",
        ])
        .prop_map(str::to_owned),
        "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn json() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        3 => json_number(),
        2 => json_string(),
        1 => Just("null".to_owned()),
        1 => Just("true".to_owned()),
        1 => prop::collection::vec(json_number(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
    ];
    let key = prop_oneof![
        3 => select(vec!["a", "b", "\\u00e9", "😀", "a b"]).prop_map(|k| format!("\"{k}\"")),
        1 => json_string(),
    ];
    prop_oneof![
        4 => prop::collection::vec((key, value.clone()), 0..6).prop_map(|m| {
            let members: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", members.join(", "))
        }),
        1 => value,
    ]
}

/// A value of the composite type `fid_comp`.
#[derive(Clone, Debug)]
pub struct Comp {
    at: Ts,
    f: F8,
    n: Num,
    s: String,
    iv: Iv,
}

impl Comp {
    fn literal(&self) -> String {
        format!(
            "ROW({}, {}, {}, {}, {})::fid_comp",
            self.at.literal("timestamptz"),
            self.f.literal(),
            self.n.literal(),
            quote(&self.s),
            self.iv.literal()
        )
    }
}

fn comp() -> impl Strategy<Value = Comp> {
    (ts(), f8(), num(false), text(), iv()).prop_map(|(at, f, n, s, iv)| Comp { at, f, n, s, iv })
}

fn array(items: Vec<String>, typ: &str) -> String {
    if items.is_empty() {
        format!("'{{}}'::{typ}[]")
    } else {
        format!("ARRAY[{}]::{typ}[]", items.join(", "))
    }
}

/// What a case writes.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A row of fid_time (and two audit events).
    Time {
        /// timestamp
        ts: Ts,
        /// timestamptz (and its mirror)
        tstz: Ts,
        /// date
        d: Ts,
        /// time
        t: Clock,
        /// timetz
        ttz: Clock,
        /// interval
        iv: Iv,
    },
    /// A row of fid_num.
    Num {
        /// float4
        f4: F8,
        /// float8
        f8: F8,
        /// numeric
        n: Num,
    },
    /// A row of fid_text (and an audit event).
    Text {
        /// text
        s: String,
        /// jsonb and json
        j: String,
        /// bytea
        b: Vec<u8>,
    },
    /// A row of fid_arr.
    Arr {
        /// timestamptz[]
        tss: Vec<Ts>,
        /// float8[]
        fs: Vec<F8>,
        /// numeric[]
        ns: Vec<Num>,
        /// text[]
        ss: Vec<Option<String>>,
        /// fid_comp
        c: Comp,
        /// fid_comp[]
        cs: Vec<Comp>,
    },
    /// A row of the partitioned fid_part.
    Part {
        /// partition key
        at: Ts,
        /// payload
        v: String,
    },
    /// A row of fid_gen, whose generated column follows the writer's TimeZone.
    Gen {
        /// timestamptz
        at: Ts,
    },
}

/// One generated case: a writer session and a row.
#[derive(Clone, Debug)]
pub struct Case {
    /// The writer's settings.
    pub writer: Writer,
    /// The row.
    pub kind: Kind,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        20 => (ts(), ts(), ts(), clock(), clock(), iv())
            .prop_map(|(ts, tstz, d, t, ttz, iv)| Kind::Time { ts, tstz, d, t, ttz, iv }),
        15 => (f4(), f8(), num(true)).prop_map(|(f4, f8, n)| Kind::Num { f4, f8, n }),
        15 => (text(), json(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(s, j, b)| Kind::Text { s, j, b }),
        10 => (
            prop::collection::vec(ts(), 0..4),
            prop::collection::vec(f8(), 0..4),
            prop::collection::vec(num(false), 0..3),
            prop::collection::vec(prop::option::weighted(0.8, text()), 0..4),
            comp(),
            prop::collection::vec(comp(), 0..3),
        )
            .prop_map(|(tss, fs, ns, ss, c, cs)| Kind::Arr { tss, fs, ns, ss, c, cs }),
        10 => (ts(), text()).prop_map(|(at, v)| Kind::Part { at, v }),
        1 => ts().prop_map(|at| Kind::Gen { at }),
    ]
}

/// The strategy for one case.
pub fn case() -> BoxedStrategy<Case> {
    (writer(), kind())
        .prop_map(|(writer, kind)| Case { writer, kind })
        .boxed()
}

impl Case {
    /// The table the case writes into (`schema.table`).
    pub fn table(&self) -> &'static str {
        match self.kind {
            Kind::Time { .. } => "public.fid_time",
            Kind::Num { .. } => "public.fid_num",
            Kind::Text { .. } => "public.fid_text",
            Kind::Arr { .. } => "public.fid_arr",
            Kind::Part { .. } => "public.fid_part",
            Kind::Gen { .. } => GENERATED_TABLE,
        }
    }

    /// The SQL that writes case `id`: the client_encoding SET (sent first, alone), then
    /// the other SETs and the inserts, run as one implicit transaction.
    pub fn sql(&self, id: i64) -> (String, String) {
        let (sets, encoding) = self.writer.sets();
        let body = match &self.kind {
            Kind::Time {
                ts,
                tstz,
                d,
                t,
                ttz,
                iv,
            } => {
                let at = tstz.literal("timestamptz");
                let mirror = tstz.mirrored().literal("timestamptz");
                format!(
                    "INSERT INTO fid_time (id, ts, tstz, tstz_mirror, d, t, ttz, iv) VALUES \
                     ({id}, {}, {at}, {mirror}, {}, {}, {}, {}); \
                     INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at) VALUES \
                     ('case {id}', 'time', 'tstz', {at}), ('case {id}', 'time', 'mirror', {mirror});",
                    ts.literal("timestamp"),
                    d.literal("date"),
                    t.literal("time"),
                    ttz.literal("timetz"),
                    iv.literal(),
                )
            }
            Kind::Num { f4, f8, n } => format!(
                "INSERT INTO fid_num (id, f4, f8, n) VALUES ({id}, {}, {}, {});",
                f4_literal(f4),
                f8.literal(),
                n.literal()
            ),
            Kind::Text { s, j, b } => format!(
                "INSERT INTO fid_text (id, s, j, js, b) VALUES ({id}, {s}, {j}::jsonb, {j}::json, '\\x{b}'::bytea); \
                 INSERT INTO pgproof.audit_events (actor, action, subject, details) VALUES \
                 ({s}, 'text', 'case {id}', {j}::jsonb);",
                s = quote(s),
                j = quote(j),
                b = hex::encode(b)
            ),
            Kind::Arr {
                tss,
                fs,
                ns,
                ss,
                c,
                cs,
            } => format!(
                "INSERT INTO fid_arr (id, tss, fs, ns, ss, c, cs) VALUES ({id}, {}, {}, {}, {}, {}, {});",
                array(
                    tss.iter().map(|t| t.literal("timestamptz")).collect(),
                    "timestamptz"
                ),
                array(fs.iter().map(F8::literal).collect(), "float8"),
                array(ns.iter().map(Num::literal).collect(), "numeric"),
                array(
                    ss.iter()
                        .map(|s| s.as_deref().map_or("NULL".to_owned(), quote))
                        .collect(),
                    "text"
                ),
                c.literal(),
                array(cs.iter().map(Comp::literal).collect(), "fid_comp"),
            ),
            Kind::Part { at, v } => format!(
                "INSERT INTO fid_part (id, at, v) VALUES ({id}, {}, {});",
                at.literal("timestamptz"),
                quote(v)
            ),
            Kind::Gen { at } => format!(
                "INSERT INTO fid_gen (id, at, wrote_in) VALUES ({id}, {}, current_setting('TimeZone'));",
                at.literal("timestamptz")
            ),
        };
        (encoding, format!("{sets} {body}"))
    }
}

/// A fid_gen row written in Pacific/Chatham at 12:00–20:59 UTC of an AD year: its day
/// there is the next one, in America/St_Johns the same one (local mean time
/// included), so a restore under St_Johns always recomputes a different `day`. For
/// testing the shrinker on a loss that is certain.
pub fn day_shifting_gen_case() -> BoxedStrategy<Case> {
    (
        1u32..=9999,
        1u32..=12,
        1u32..=28,
        12u32..=20,
        0u32..60,
        0u32..60,
        frac(),
    )
        .prop_map(|(year, month, day, hour, minute, second, frac)| Case {
            writer: Writer {
                tz: "Pacific/Chatham",
                datestyle: "ISO, MDY",
                intervalstyle: "postgres",
                encoding: "UTF8",
            },
            kind: Kind::Gen {
                at: Ts::At(Moment {
                    bc: false,
                    year,
                    month,
                    day,
                    hour,
                    minute,
                    second,
                    frac,
                    offset: Some(0),
                }),
            },
        })
        .boxed()
}
