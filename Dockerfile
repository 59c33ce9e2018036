# The same service outside cloud.gov: `docker build -t fac-backup .` then run with VCAP_SERVICES
# (or FAC_BACKUP_VCAP_FILE) and PORT set. Clients of every major cloud.gov offers (15 to 18) come
# from the PostgreSQL project's repository, side by side under /usr/lib/postgresql/<major>/bin;
# each operation picks the major it needs (service/clients.py).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    FAC_BACKUP_PG_ROOT=/usr/lib/postgresql \
    FAC_BACKUP_CONTROL_SOCKET=/tmp/fac-backup.sock

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && install -d /usr/share/postgresql-common/pgdg \
    && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
         https://www.postgresql.org/media/keys/ACCC4CF8.asc \
    && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] http://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
         > /etc/apt/sources.list.d/pgdg.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
         postgresql-client-15 postgresql-client-16 postgresql-client-17 postgresql-client-18 \
    && apt-get purge -y curl && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system fac && useradd --system --gid fac --home-dir /app --shell /usr/sbin/nologin fac

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY service/ service/
COPY deploy/ deploy/

USER fac
EXPOSE 8080
# Exec form: Python itself is PID 1 and installs SIGTERM/SIGINT handlers, so `docker stop`
# stops it the way `cf stop` does (cancel the running job, exit 0 within 10 s).
ENTRYPOINT ["python", "-m", "service"]
CMD ["daemon"]
