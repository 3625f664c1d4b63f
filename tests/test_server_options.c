/*
 * test_server_options.c: `gptd serve` configuration: defaults, the JSON file, GPTD_*
 * environment variables and flags, with precedence flags > environment > file > defaults.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include <gptd/server.h>

/* Only engine_config_init_default is needed from the engine; a stand-in keeps this test free of
 * the engine's object code (it checks that engine options land in the struct, not the values
 * the engine picks). */
void engine_config_init_default(struct engine_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    cfg->kv_cache_bytes = (size_t)256 << 20;
    cfg->max_batch_tokens = 256;
    cfg->max_queue = 256;
    cfg->queue_timeout_ms = 30000;
}

static const char *const *fake_env;

static const char *fake_getenv(const char *name) {
    for (const char *const *e = fake_env; e != NULL && *e != NULL; e += 2) {
        if (strcmp(e[0], name) == 0) {
            return e[1];
        }
    }
    return NULL;
}

static char tmp_path[64];

static void write_tmp(const char *text) {
    snprintf(tmp_path, sizeof(tmp_path), "/tmp/gptd_test_opts_XXXXXX");
    int fd = mkstemp(tmp_path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static int load(struct server_options *o, int argc, char **argv, char *err) {
    server_options_init(o);
    return server_options_load(o, argc, argv, fake_getenv, err, 256);
}

START_TEST(test_options_defaults_are_safe) {
    struct server_options o;
    char err[256];
    char *argv[] = {"serve", "-m", "/models/x"};
    fake_env = NULL;
    ck_assert_int_eq(load(&o, 3, argv, err), 0);
    ck_assert_str_eq(o.model_dir, "/models/x");
    ck_assert_str_eq(o.server.host, "127.0.0.1");
    ck_assert_int_eq(o.server.port, 8080);
    ck_assert_int_eq(o.server.connection_timeout_s, 30);
    /* Issue 21: deadlines on by default, a per-client limit above wrk -c 256, the table sized
     * from the descriptor limit, no admin listener unless asked. */
    ck_assert_int_eq(o.server.header_timeout_s, 10);
    ck_assert_int_eq(o.server.body_timeout_s, 30);
    ck_assert_int_eq(o.server.per_ip_connection_limit, 512);
    ck_assert_int_eq(o.server.connection_limit, 0);
    ck_assert_int_eq(o.server.admin_port, -1);
    ck_assert_uint_eq(o.server.max_body_bytes, 1024 * 1024);
    ck_assert_uint_eq(o.server.connection_memory_bytes, 128 * 1024);
    ck_assert_uint_eq(o.server.max_header_bytes, 32 * 1024);
    ck_assert_int_eq(o.server.n_api_keys, 0);
    ck_assert_int_eq(o.server.n_cors_origins, 0);
    ck_assert_int_eq(o.drain_timeout_s, 30);
    ck_assert(o.server.access_log);
    ck_assert_str_eq(o.weights, "auto"); /* exact: the checkpoint's own precision */
    ck_assert_str_eq(o.kv_dtype, "f32");
    server_options_finish(&o);
}
END_TEST

START_TEST(test_options_precedence_flags_over_env_over_file) {
    write_tmp("{\"_comment\": \"doc\", \"port\": 1000, \"max_body\": \"2MiB\", \"host\": "
              "\"0.0.0.0\", \"api_key\": [\"file-a\", \"file-b\"], \"strict_model\": true, "
              "\"queue_timeout\": 5, \"kv_cache_mb\": 64, \"weights\": \"f16\", "
              "\"kv_cache_dtype\": \"f16\"}");
    const char *env[] = {"GPTD_PORT",
                         "2000",
                         "GPTD_MAX_BODY",
                         "512K",
                         "GPTD_CONFIG",
                         tmp_path,
                         "GPTD_CORS_ORIGINS",
                         "http://a.example, http://b.example",
                         "GPTD_ALLOWED_HOSTS",
                         "gptd.internal",
                         NULL};
    fake_env = env;
    char *argv[] = {
        "serve",           "--port", "3000",        "--api-key", "flag-c", "--api-key=flag-d",
        "--queue-timeout", "2.5",    "--max-batch", "2"};
    struct server_options o;
    char err[256];
    ck_assert_msg(load(&o, 10, argv, err) == 0, "%s", err);
    ck_assert_int_eq(o.server.port, 3000);                  /* flag */
    ck_assert_uint_eq(o.server.max_body_bytes, 512 * 1024); /* env over file */
    ck_assert_str_eq(o.server.host, "0.0.0.0");             /* file */
    ck_assert(o.server.strict_model);                       /* file */
    ck_assert_int_eq(o.server.n_api_keys, 2);               /* flags replace the file's list */
    ck_assert_str_eq(o.server.api_keys[0], "flag-c");
    ck_assert_str_eq(o.server.api_keys[1], "flag-d");
    ck_assert_int_eq(o.server.n_cors_origins, 2);
    ck_assert_str_eq(o.server.cors_origins[1], "http://b.example");
    ck_assert_int_eq(o.server.n_allowed_hosts, 1);
    ck_assert_str_eq(o.server.allowed_hosts[0], "gptd.internal");
    ck_assert_int_eq(o.engine.queue_timeout_ms, 2500);
    ck_assert_int_eq(o.engine.max_running, 2);
    ck_assert_uint_eq(o.engine.kv_cache_bytes, (size_t)64 << 20);
    ck_assert_str_eq(o.weights, "f16");  /* file */
    ck_assert_str_eq(o.kv_dtype, "f16"); /* file */
    server_options_finish(&o);
    unlink(tmp_path);
}
END_TEST

START_TEST(test_options_reads_api_key_file_and_bare_booleans) {
    write_tmp("# keys\nkey-one\n\n  key-two  \n");
    fake_env = NULL;
    char *argv[] = {"serve", "--api-key-file",    tmp_path, "--strict-model", "--metrics-public",
                    "false", "--access-log=false"};
    struct server_options o;
    char err[256];
    ck_assert_msg(load(&o, 7, argv, err) == 0, "%s", err);
    ck_assert_int_eq(o.server.n_api_keys, 2);
    ck_assert_str_eq(o.server.api_keys[1], "key-two");
    ck_assert(o.server.strict_model);
    ck_assert(!o.server.metrics_public);
    ck_assert(!o.server.access_log);
    server_options_finish(&o);
    unlink(tmp_path);
}
END_TEST

struct bad_case {
    const char *flag, *value, *msg_part;
};

static const struct bad_case bad[] = {
    {"--port", "70000", "--port"},
    {"--port", "80x", "--port"},
    {"--max-body", "1X", "--max-body"},
    {"--max-body", "-5", "--max-body"},
    {"--frobnicate", "1", "frobnicate"},
    {"--strict-model", "maybe", "maybe"},
    {"--queue-timeout", "-1", "queue"},
    {"--http-threads", "0", "--http-threads"},
    {"--header-timeout", "0", "--header-timeout"},
    {"--body-timeout", "x", "--body-timeout"},
    {"--admin-port", "-2", "--admin-port"},
};

START_TEST(test_options_rejects_bad_values_with_a_message) {
    fake_env = NULL;
    char *argv[] = {"serve", (char *)bad[_i].flag, (char *)bad[_i].value};
    struct server_options o;
    char err[256] = "";
    int rc = load(&o, 3, argv, err);
    if (strcmp(bad[_i].flag, "--strict-model") == 0) {
        /* a bare boolean followed by a non-boolean: the word is an unknown argument */
        ck_assert_int_eq(rc, -1);
    } else {
        ck_assert_int_eq(rc, -1);
    }
    ck_assert_msg(strstr(err, bad[_i].msg_part) != NULL, "message '%s' lacks '%s'", err,
                  bad[_i].msg_part);
    server_options_finish(&o);
}
END_TEST

START_TEST(test_options_rejects_unknown_config_keys) {
    write_tmp("{\"prot\": 1}");
    fake_env = NULL;
    char *argv[] = {"serve", "--config", tmp_path};
    struct server_options o;
    char err[256];
    ck_assert_int_eq(load(&o, 3, argv, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "prot"));
    server_options_finish(&o);
    unlink(tmp_path);
}
END_TEST

START_TEST(test_options_example_config_file_loads) {
    const char *src = getenv("GPTD_SOURCE_DIR");
    if (src == NULL) {
        return;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/config/gptd.json", src);
    fake_env = NULL;
    char *argv[] = {"serve", "--config", path};
    struct server_options o;
    char err[256];
    ck_assert_msg(load(&o, 3, argv, err) == 0, "%s", err);
    ck_assert_str_eq(o.server.host, "127.0.0.1");
    server_options_finish(&o);
}
END_TEST

int main(void) {
    Suite *s = suite_create("server_options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, test_options_defaults_are_safe);
    tcase_add_test(tc, test_options_precedence_flags_over_env_over_file);
    tcase_add_test(tc, test_options_reads_api_key_file_and_bare_booleans);
    tcase_add_loop_test(tc, test_options_rejects_bad_values_with_a_message, 0,
                        (int)(sizeof(bad) / sizeof(bad[0])));
    tcase_add_test(tc, test_options_rejects_unknown_config_keys);
    tcase_add_test(tc, test_options_example_config_file_loads);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
