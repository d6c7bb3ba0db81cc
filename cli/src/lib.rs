//! sandbar-cli: the `sandbar` command. `sandbar up` will run the API, a runner and the proxy on one host with
//! embedded defaults; client commands (create, list, exec, ssh, term, rm) will drive the REST API.
//! Not built yet: see the CLI issue.
