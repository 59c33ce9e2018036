# The same service outside cloud.gov: `docker build -t fac-backup .` then run with VCAP_SERVICES
# (or FAC_BACKUP_VCAP_FILE) and PORT set. Debian bookworm ships PostgreSQL 15's client.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080 \
    FAC_BACKUP_PG_BIN=/usr/lib/postgresql/15/bin \
    FAC_BACKUP_CONTROL_SOCKET=/tmp/fac-backup.sock

RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
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
