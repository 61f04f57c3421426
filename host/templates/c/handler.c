// `{{name}}`: a jobhost handler. Bindings come from `wit-bindgen c` (gen/job_plugin.h); the
// payload is tokenized with jsmn.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSMN_STATIC
#include "jsmn.h"
#include "job_plugin.h"

static const char SCHEMA[] =
    "{\"type\": \"object\", \"required\": [\"name\"],"
    " \"properties\": {\"name\": {\"type\": \"string\", \"minLength\": 1}},"
    " \"additionalProperties\": false}";

void exports_jobhost_plugin_handler_describe(exports_jobhost_plugin_handler_handler_info_t *ret) {
    // What is returned is freed by the generated post-return code: allocate it.
    ret->names.len = 1;
    ret->names.ptr = malloc(sizeof(job_plugin_string_t));
    job_plugin_string_dup(&ret->names.ptr[0], "{{name}}");
    ret->schema.is_some = true;
    job_plugin_string_dup(&ret->schema.val, SCHEMA);
    job_plugin_string_dup(&ret->version, "0.1.0");
}

static bool fail(exports_jobhost_plugin_handler_job_error_t *err, const char *message) {
    err->tag = JOBHOST_PLUGIN_TYPES_JOB_ERROR_PERMANENT;
    job_plugin_string_dup(&err->val.permanent, message);
    return false;
}

// The host checked the payload against SCHEMA before calling this: {"name": "..."}.
bool exports_jobhost_plugin_handler_handle(exports_jobhost_plugin_handler_job_t *job,
                                           job_plugin_option_string_t *ret,
                                           exports_jobhost_plugin_handler_job_error_t *err) {
    const char *js = (const char *)job->payload.ptr;
    jsmn_parser parser;
    jsmntok_t tokens[3];
    jsmn_init(&parser);
    if (jsmn_parse(&parser, js, job->payload.len, tokens, 3) != 3) {
        return fail(err, "payload is not {\"name\": \"...\"}");
    }
    // The name as it appears in the JSON text (escapes kept): valid inside a JSON string.
    int len = tokens[2].end - tokens[2].start;
    const char *name = js + tokens[2].start;
    if (len > 32) return fail(err, "name is longer than 32 characters");

    char text[128];
    job_plugin_string_t line;
    snprintf(text, sizeof text, "greeted %.*s", len, name);
    job_plugin_string_set(&line, text);  // borrowed: the host copies it during the call
    jobhost_plugin_host_log(JOBHOST_PLUGIN_TYPES_LOG_LEVEL_INFO, &line);

    snprintf(text, sizeof text, "{\"greeting\": \"Hello, %.*s!\"}", len, name);
    ret->is_some = true;
    job_plugin_string_dup(&ret->val, text);
    return true;
}
