/*
 * web.h: the playground's files (web/), embedded into the binary at build time by
 * tools/embed-files.c; server.c serves them on GET (see docs/ARCHITECTURE.md, Playground).
 */
#ifndef GPTD_SERVER_WEB_H
#define GPTD_SERVER_WEB_H

#include <stddef.h>

struct web_asset {
    const char *path;         /* URL path, e.g. "/" or "/playground.js" */
    const char *content_type; /* e.g. "text/html; charset=utf-8" */
    const unsigned char *data;
    size_t len;
};

extern const struct web_asset web_assets[];
extern const int web_assets_count;

#endif
