-- Regression cases for tests/tests/fidelity_props.rs, replayed first in every run
-- (in the first batch, through both formats). One block per case, blocks separated
-- by a blank line: a "-- regression <what> (<schema.table>)" line, the writer's
-- SET client_encoding on its own line (sent alone, before the body), then the
-- body: the writer's other settings and the inserts. Ids are negative so they never
-- meet generated ones. A shrunk disagreement prints in this shape: paste it here
-- with its label changed to "regression …" once it is understood.

-- regression NaN with the sign bit, everywhere a float can be (public.fid_num)
SET client_encoding = 'UTF8';
SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
INSERT INTO fid_num (id, f4, f8, n) VALUES (-1, ('Infinity'::float4 - 'Infinity'::float4), ('Infinity'::float8 - 'Infinity'::float8), 'NaN');

-- regression arrays and composites of sign-bit NaNs, -0 and subnormals (public.fid_arr)
SET client_encoding = 'UTF8';
SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard';
INSERT INTO fid_arr (id, tss, fs, ns, ss, c, cs) VALUES (-2, ARRAY['0044-03-15 12:00:00+00 BC'::timestamptz, '0044-03-15 12:00:00+00'::timestamptz], ARRAY[('Infinity'::float8 - 'Infinity'::float8), '-0'::float8, '5e-324'::float8], ARRAY['NaN'::numeric, '1.500'::numeric], ARRAY['a,b', NULL, 'c"d', '\.'], ROW('infinity', (-'NaN'::float8), '-Infinity', E'tab\there', '-1 2:03:04')::fid_comp, ARRAY[ROW('-infinity', '-0', '0.000', '', '1 year -2 mons')::fid_comp]);

-- regression 44 BC and 44 AD in one row, with its mirror and audit events (public.fid_time)
SET client_encoding = 'UTF8';
SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'German, DMY'; SET IntervalStyle = 'iso_8601';
INSERT INTO fid_time (id, ts, tstz, tstz_mirror, d, t, ttz, iv) VALUES (-3, '0044-03-15 12:00:00 BC', '0044-03-15 12:00:00+00', '0044-03-15 12:00:00+00 BC', '0001-01-01 BC', '24:00:00', '23:59:59.9999995-15:59', '-1 2:03:04'); INSERT INTO pgproof.audit_events (actor, action, subject, occurred_at) VALUES ('case -3', 'time', 'tstz', '0044-03-15 12:00:00+00'), ('case -3', 'time', 'mirror', '0044-03-15 12:00:00+00 BC');

-- regression COPY markers, backslashes and non-BMP text; jsonb with duplicate keys (public.fid_text)
SET client_encoding = 'UTF8';
SET TimeZone = 'America/St_Johns'; SET DateStyle = 'Postgres, YMD'; SET IntervalStyle = 'postgres_verbose';
INSERT INTO fid_text (id, s, j, js, b) VALUES (-4, E'a\n\\.\nb\\N\t😀\r', '{"a": 1e308, "a": -0, "😀": 1E+1000, "b": [1e-400, 5e-324]}', '{"a": 1e308, "a": -0}', '\x005c0a2e'); INSERT INTO pgproof.audit_events (actor, action, subject, details) VALUES (E'a\n\\.\nb', 'text', 'case -4', '{"a": 1, "a": 2}');

-- regression a partition key at both infinities and before 1900 (public.fid_part)
SET client_encoding = 'UTF8';
SET TimeZone = 'Australia/Lord_Howe'; SET DateStyle = 'ISO, DMY'; SET IntervalStyle = 'postgres';
INSERT INTO fid_part (id, at, v) VALUES (-5, 'infinity', 'x'), (-5, '-infinity', 'y'), (-5, '1850-06-01 12:00', 'lmt');
