-- Registry credentials (Daytona's `/docker-registry`), per organization. `host` is the registry's host[:port] taken
-- from `url`: image references starting with it are pulled with these credentials. The password is handed only to
-- the runner carrying a job that pulls from `host` and is never returned by the API.
CREATE TABLE docker_registries (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    password TEXT NOT NULL,
    project TEXT NOT NULL,
    registry_type TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX docker_registries_org_host ON docker_registries (organization_id, host);
