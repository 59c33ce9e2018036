"""FAC-like sample data for the demo, the tests and the benchmark.

A few wide tables that grow with `scale` (as the dissemination tables do in
production), a few dozen small lookup tables, a second schema, an enum type,
a view, a standalone sequence, a JSONB column and a table whose name needs
quoting. Rows are generated server-side with generate_series, so 1 GB takes
seconds, not minutes.

And what FAC's schema carries besides (REFERENCE section 6), each small so
the data stays quick to generate: the `uuid-ossp` extension, a domain,
plpgsql functions (one with EXECUTE revoked from PUBLIC, one named in
non-ASCII letters), a `curation.record_version` history written by an audit
trigger, a partitioned table, a materialized view whose ids come from a
sequence (`nextval` in its query, as FAC's do) and one left unpopulated, a
row-level-security policy, an API schema of views, and, when a second role
is named (`api_role`, PostgREST's `api_fac_gov` in FAC), the grants FAC
gives it: USAGE on the API schema, SELECT on its views, table, column,
sequence and function grants, and default privileges.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA_SQL = """
CREATE TYPE public.audit_status AS ENUM ('in_progress', 'submitted', 'disseminated');
CREATE SEQUENCE public.report_number_seq START 1000;
CREATE TABLE public.dissemination_general (
    id bigserial PRIMARY KEY,
    report_id text NOT NULL UNIQUE,
    auditee_name text NOT NULL,
    auditee_uei text NOT NULL,
    audit_year int NOT NULL,
    status public.audit_status NOT NULL DEFAULT 'submitted',
    total_amount_expended numeric(18, 2) NOT NULL,
    fac_accepted_date date NOT NULL,
    notes text
);
CREATE TABLE public.dissemination_federalaward (
    id bigserial PRIMARY KEY,
    report_id text NOT NULL REFERENCES public.dissemination_general (report_id),
    award_reference text NOT NULL,
    federal_agency_prefix text NOT NULL,
    federal_award_extension text NOT NULL,
    federal_program_name text NOT NULL,
    amount_expended numeric(18, 2) NOT NULL,
    is_major boolean NOT NULL
);
CREATE INDEX federalaward_report_idx ON public.dissemination_federalaward (report_id);
CREATE TABLE public.dissemination_finding (
    id bigserial PRIMARY KEY,
    report_id text NOT NULL REFERENCES public.dissemination_general (report_id),
    award_reference text NOT NULL,
    reference_number text NOT NULL,
    type_requirement text NOT NULL,
    is_material_weakness boolean NOT NULL
);
CREATE TABLE public.audit_singleauditchecklist (
    id bigserial PRIMARY KEY,
    report_id text NOT NULL,
    general_information jsonb NOT NULL,
    submitted_at timestamptz NOT NULL DEFAULT now()
);
CREATE VIEW public.dissemination_summary AS
    SELECT g.audit_year, count(*) AS audits, sum(g.total_amount_expended) AS expended
    FROM public.dissemination_general g GROUP BY g.audit_year;
CREATE SCHEMA support;
CREATE TABLE support.cog_over (
    id serial PRIMARY KEY,
    uei text NOT NULL,
    cognizant_agency text NOT NULL
);
CREATE TABLE public."Odd Name ""quoted"" é" (id int PRIMARY KEY, "Label" text);
"""

# Kept off the public tables' dependencies (views and foreign keys into them are
# what a legacy restore has to work around), so each object here is one more kind,
# not one more obstacle.
FAC_OBJECTS_SQL = """
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA public;
CREATE DOMAIN public.agency_code AS text CHECK (VALUE ~ '^[0-9]{2}$');
CREATE FUNCTION public.audit_year_of(report_id text) RETURNS int
    LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    RETURN split_part(report_id, '-', 1)::int;
END
$$;
REVOKE EXECUTE ON FUNCTION public.audit_year_of(text) FROM PUBLIC;
CREATE FUNCTION public."année_fiscale"(day date) RETURNS int LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN extract(year FROM day + interval '3 months')::int;
END
$$;

CREATE SCHEMA curation;
CREATE TABLE curation.record_version (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    operation text NOT NULL,
    row_id text,
    data jsonb
);
CREATE FUNCTION curation.record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO curation.record_version (table_name, operation, row_id, data)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.id::text ELSE NEW.id::text END,
            CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END);
    RETURN NULL;
END
$$;
CREATE TRIGGER cog_over_audit AFTER INSERT OR UPDATE OR DELETE ON support.cog_over
    FOR EACH ROW EXECUTE FUNCTION curation.record_change();
ALTER TABLE support.cog_over ADD COLUMN agency public.agency_code;
ALTER TABLE support.cog_over ADD COLUMN ref uuid NOT NULL DEFAULT public.uuid_generate_v4();

CREATE TABLE support.history (
    report_id text NOT NULL,
    audit_year int NOT NULL,
    event text NOT NULL
) PARTITION BY RANGE (audit_year);
CREATE TABLE support.history_2016_2020 PARTITION OF support.history FOR VALUES FROM (2016) TO (2021);
CREATE TABLE support.history_2021_2030 PARTITION OF support.history FOR VALUES FROM (2021) TO (2031);

CREATE SEQUENCE support.cog_summary_id_seq;
CREATE MATERIALIZED VIEW support.cog_summary AS
    SELECT nextval('support.cog_summary_id_seq') AS id, s.cognizant_agency, s.audits
    FROM (SELECT cognizant_agency, count(*) AS audits FROM support.cog_over
          GROUP BY cognizant_agency ORDER BY cognizant_agency) s
    WITH NO DATA;
CREATE MATERIALIZED VIEW support.history_by_year AS
    SELECT audit_year, count(*) AS events FROM support.history GROUP BY audit_year
    WITH NO DATA;

CREATE TABLE support.staff_note ("clé" text PRIMARY KEY, owner_name text NOT NULL, body text);
ALTER TABLE support.staff_note ENABLE ROW LEVEL SECURITY;
CREATE POLICY staff_note_own ON support.staff_note USING (owner_name = current_user);

CREATE SCHEMA api_v1_1_0;
CREATE VIEW api_v1_1_0.cognizant AS SELECT uei, cognizant_agency FROM support.cog_over;
CREATE VIEW api_v1_1_0.history AS SELECT report_id, audit_year, event FROM support.history;
"""

# FAC's migrations grant its PostgREST role these kinds of privileges.
API_GRANTS_SQL = """
GRANT USAGE ON SCHEMA api_v1_1_0 TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA api_v1_1_0 TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA api_v1_1_0 GRANT SELECT ON TABLES TO {role};
ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO {role};
GRANT USAGE ON SCHEMA support TO {role};
GRANT SELECT, INSERT, DELETE ON support.staff_note TO {role};
GRANT SELECT (uei, cognizant_agency), UPDATE (agency) ON support.cog_over TO {role};
GRANT USAGE, SELECT ON SEQUENCE support.cog_over_id_seq TO {role};
GRANT EXECUTE ON FUNCTION public.audit_year_of(text) TO {role} WITH GRANT OPTION;
"""

FILL_SQL = """
INSERT INTO public.dissemination_general
    (report_id, auditee_name, auditee_uei, audit_year, status, total_amount_expended,
     fac_accepted_date, notes)
SELECT format('%s-%s-GSAFAC-%s', 2016 + i % 9, lpad((i % 12 + 1)::text, 2, '0'), lpad(i::text, 10, '0')),
       'Auditee ' || md5(i::text), upper(substr(md5((i * 7)::text), 1, 12)), 2016 + i % 9,
       (ARRAY['in_progress', 'submitted', 'disseminated'])[1 + i % 3]::public.audit_status,
       (i::bigint * 1013 % 100000000) / 100.0, date '2016-01-01' + (i % 3000),
       repeat(md5(i::text), 1 + i % 4)
FROM generate_series(1, %(general)s) AS i;

INSERT INTO public.dissemination_federalaward
    (report_id, award_reference, federal_agency_prefix, federal_award_extension,
     federal_program_name, amount_expended, is_major)
SELECT g.report_id, format('AWARD-%s', lpad(k::text, 4, '0')), lpad((10 + k % 90)::text, 2, '0'),
       lpad((k * 37 % 1000)::text, 3, '0'), 'Program ' || md5(g.id::text || k::text),
       (g.id * k % 10000000) / 100.0, (g.id + k) % 5 = 0
FROM public.dissemination_general g, generate_series(1, %(awards_per)s) AS k;

INSERT INTO public.dissemination_finding
    (report_id, award_reference, reference_number, type_requirement, is_material_weakness)
SELECT g.report_id, 'AWARD-0001', format('%s-%s', g.audit_year, lpad(g.id::text, 3, '0')),
       substr('ABCDEFGHIJKLMNOP', 1 + g.id::int % 10, 3), g.id % 7 = 0
FROM public.dissemination_general g WHERE g.id % 3 = 0;

INSERT INTO public.audit_singleauditchecklist (report_id, general_information)
SELECT g.report_id, jsonb_build_object('auditee_name', g.auditee_name, 'uei', g.auditee_uei,
       'year', g.audit_year, 'contacts', jsonb_build_array(md5(g.id::text), md5((g.id + 1)::text)))
FROM public.dissemination_general g;

INSERT INTO support.cog_over (uei, cognizant_agency)
SELECT auditee_uei, lpad((id % 90 + 10)::text, 2, '0') FROM public.dissemination_general WHERE id % 10 = 0;

INSERT INTO public."Odd Name ""quoted"" é" VALUES (1, 'one'), (2, 'two');
SELECT setval('public.report_number_seq', 4242);
"""

FAC_FILL_SQL = """
UPDATE support.cog_over SET agency = cognizant_agency WHERE id % 2 = 0;
INSERT INTO support.history (report_id, audit_year, event)
SELECT report_id, audit_year, (ARRAY['submitted', 'certified', 'disseminated'])[1 + id::int % 3]
FROM public.dissemination_general WHERE id % 5 = 0;
INSERT INTO support.staff_note VALUES ('première', 'fac', 'note é'), ('second', 'staff', NULL);
REFRESH MATERIALIZED VIEW support.cog_summary;
"""


def create_sample_schema(conn: psycopg.Connection, *, small_tables: int = 12, api_role: str | None = None) -> None:
    """The FAC-like schema, plus `small_tables` lookup tables (public.lookup_NN); with
    `api_role` (an existing role), the grants FAC gives its API role."""
    conn.execute(SCHEMA_SQL)
    conn.execute(FAC_OBJECTS_SQL)
    if api_role:
        conn.execute(API_GRANTS_SQL.format(role=sql.Identifier(api_role).as_string(conn)))
    for n in range(small_tables):
        table = sql.Identifier(f"lookup_{n:02d}")
        conn.execute(sql.SQL("CREATE TABLE public.{} (code text PRIMARY KEY, label text NOT NULL)").format(table))
        conn.execute(
            sql.SQL("INSERT INTO public.{} SELECT 'c' || i, 'label ' || md5(i::text) "
                    "FROM generate_series(1, {}) AS i").format(table, sql.Literal(50 + n * 25))
        )


def fill_sample_data(conn: psycopg.Connection, *, general_rows: int = 2000, awards_per_audit: int = 5) -> None:
    """Generate rows; dissemination_general gets `general_rows`, federal awards `awards_per_audit` each."""
    conn.execute(FILL_SQL.replace("%(general)s", str(int(general_rows)))
                 .replace("%(awards_per)s", str(int(awards_per_audit))))
    conn.execute(FAC_FILL_SQL)
    conn.execute("ANALYZE")


def ensure_role(conn: psycopg.Connection, role: str) -> None:
    """Create a login-less role unless it exists (roles are cluster-wide: other databases
    and other test runs may share it, so it is never dropped here)."""
    conn.execute(sql.SQL("DO $$BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
                 .format(sql.Identifier(role)))


def load_sample_database(conn: psycopg.Connection, *, general_rows: int = 2000,
                         awards_per_audit: int = 5, small_tables: int = 12, api_role: str | None = None) -> None:
    """Schema and data in one go (the connection should be in autocommit mode)."""
    create_sample_schema(conn, small_tables=small_tables, api_role=api_role)
    fill_sample_data(conn, general_rows=general_rows, awards_per_audit=awards_per_audit)
