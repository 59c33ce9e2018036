"""FAC-like sample data for the demo, the tests and the benchmark.

A few wide tables that grow with `scale` (as the dissemination tables do in
production), a few dozen small lookup tables, a second schema, an enum type,
a view, a standalone sequence, a JSONB column and a table whose name needs
quoting. Rows are generated server-side with generate_series, so 1 GB takes
seconds, not minutes.
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

FILL_SQL = """
INSERT INTO public.dissemination_general
    (report_id, auditee_name, auditee_uei, audit_year, status, total_amount_expended,
     fac_accepted_date, notes)
SELECT format('%s-%s-GSAFAC-%s', 2016 + i % 9, lpad((i % 12 + 1)::text, 2, '0'), lpad(i::text, 10, '0')),
       'Auditee ' || md5(i::text), upper(substr(md5((i * 7)::text), 1, 12)), 2016 + i % 9,
       (ARRAY['in_progress', 'submitted', 'disseminated'])[1 + i % 3]::public.audit_status,
       (i * 1013 % 100000000) / 100.0, date '2016-01-01' + (i % 3000),
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


def create_sample_schema(conn: psycopg.Connection, *, small_tables: int = 12) -> None:
    """The FAC-like schema, plus `small_tables` lookup tables (public.lookup_NN)."""
    conn.execute(SCHEMA_SQL)
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
    conn.execute("ANALYZE")


def load_sample_database(conn: psycopg.Connection, *, general_rows: int = 2000,
                         awards_per_audit: int = 5, small_tables: int = 12) -> None:
    """Schema and data in one go (the connection should be in autocommit mode)."""
    create_sample_schema(conn, small_tables=small_tables)
    fill_sample_data(conn, general_rows=general_rows, awards_per_audit=awards_per_audit)
