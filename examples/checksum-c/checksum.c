// `checksum`: computes a checksum of a text (CRC-32, Adler-32 or FNV-1a) and, given an
// expected value, fails permanently on a mismatch.
//
// Payload: {"data": "hello", "algorithm": "crc32", "expect": "3610a686"}  (expect optional)
// Output:  {"algorithm": "crc32", "bytes": 5, "checksum": "3610a686"}
//
// Bindings come from `wit-bindgen c` (job_plugin.h); the payload is tokenized with jsmn.
// wasi-libc's stdio is used (snprintf); the preview-1 adapter maps it onto WASI 0.2.

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSMN_STATIC
#include "jsmn.h"
#include "job_plugin.h"

static const char SCHEMA[] =
    "{\"type\": \"object\", \"required\": [\"data\", \"algorithm\"],"
    " \"properties\": {"
    "  \"data\": {\"type\": \"string\", \"maxLength\": 1048576},"
    "  \"algorithm\": {\"enum\": [\"crc32\", \"adler32\", \"fnv1a32\"]},"
    "  \"expect\": {\"type\": \"string\", \"pattern\": \"^[0-9a-f]{8}$\"}},"
    " \"additionalProperties\": false}";

void exports_jobhost_plugin_handler_describe(exports_jobhost_plugin_handler_handler_info_t *ret) {
    // Everything returned is freed by the generated post-return code: allocate it.
    ret->names.len = 1;
    ret->names.ptr = malloc(sizeof(job_plugin_string_t));
    job_plugin_string_dup(&ret->names.ptr[0], "checksum");
    ret->schema.is_some = true;
    job_plugin_string_dup(&ret->schema.val, SCHEMA);
    job_plugin_string_dup(&ret->version, "0.1.0");
}

static uint32_t crc32(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & -(crc & 1u));
    }
    return ~crc;
}

static uint32_t adler32(const uint8_t *p, size_t n) {
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + p[i]) % 65521u;
        b = (b + a) % 65521u;
    }
    return (b << 16) | a;
}

static uint32_t fnv1a32(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 16777619u;
    return h;
}

static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(uint8_t *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { out[0] = 0xC0 | (cp >> 6); out[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        out[0] = 0xE0 | (cp >> 12); out[1] = 0x80 | ((cp >> 6) & 0x3F);
        out[2] = 0x80 | (cp & 0x3F); return 3;
    }
    out[0] = 0xF0 | (cp >> 18); out[1] = 0x80 | ((cp >> 12) & 0x3F);
    out[2] = 0x80 | ((cp >> 6) & 0x3F); out[3] = 0x80 | (cp & 0x3F); return 4;
}

static uint32_t read_u16(const char *s) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = (v << 4) | (uint32_t)hex(s[i]);
    return v;
}

// Decodes the JSON string token `t` of `js` (its escapes) into `out`; returns its length.
// The host has parsed the payload as JSON already, so the escapes are well formed.
static size_t unescape(const char *js, const jsmntok_t *t, uint8_t *out) {
    size_t n = 0;
    for (int i = t->start; i < t->end; i++) {
        if (js[i] != '\\') { out[n++] = (uint8_t)js[i]; continue; }
        char c = js[++i];
        switch (c) {
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'u': {
                uint32_t cp = read_u16(js + i + 1);
                i += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && js[i + 1] == '\\' && js[i + 2] == 'u') {
                    uint32_t low = read_u16(js + i + 3);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
                n += put_utf8(out + n, cp);
                break;
            }
            default: out[n++] = (uint8_t)c;  // \" \\ \/
        }
    }
    return n;
}

static bool key_is(const char *js, const jsmntok_t *t, const char *key) {
    size_t len = strlen(key);
    return t->type == JSMN_STRING && (size_t)(t->end - t->start) == len &&
           memcmp(js + t->start, key, len) == 0;
}

static bool fail(exports_jobhost_plugin_handler_job_error_t *err, const char *message) {
    err->tag = JOBHOST_PLUGIN_TYPES_JOB_ERROR_PERMANENT;
    job_plugin_string_dup(&err->val.permanent, message);
    return false;
}

bool exports_jobhost_plugin_handler_handle(exports_jobhost_plugin_handler_job_t *job,
                                           job_plugin_option_string_t *ret,
                                           exports_jobhost_plugin_handler_job_error_t *err) {
    const char *js = (const char *)job->payload.ptr;
    size_t js_len = job->payload.len;
    jsmn_parser parser;
    jsmn_init(&parser);
    int count = jsmn_parse(&parser, js, js_len, NULL, 0);
    if (count < 1) return fail(err, "payload is not a JSON object");
    jsmntok_t *tokens = malloc(sizeof(jsmntok_t) * (size_t)count);
    jsmn_init(&parser);
    jsmn_parse(&parser, js, js_len, tokens, (unsigned)count);

    const jsmntok_t *data = NULL, *algorithm = NULL, *expect = NULL;
    // The schema allows only these three keys, each with a string value.
    for (int i = 1; i + 1 < count; i += 2) {
        if (key_is(js, &tokens[i], "data")) data = &tokens[i + 1];
        else if (key_is(js, &tokens[i], "algorithm")) algorithm = &tokens[i + 1];
        else if (key_is(js, &tokens[i], "expect")) expect = &tokens[i + 1];
    }
    if (data == NULL || algorithm == NULL) {
        free(tokens);
        return fail(err, "payload needs `data` and `algorithm`");
    }
    uint8_t *bytes = malloc((size_t)(data->end - data->start) + 1);
    size_t n = unescape(js, data, bytes);
    uint32_t sum;
    const char *name;
    if (key_is(js, algorithm, "crc32")) { sum = crc32(bytes, n); name = "crc32"; }
    else if (key_is(js, algorithm, "adler32")) { sum = adler32(bytes, n); name = "adler32"; }
    else { sum = fnv1a32(bytes, n); name = "fnv1a32"; }
    free(bytes);

    char digest[9];
    snprintf(digest, sizeof digest, "%08x", sum);
    bool mismatch = expect != NULL && (expect->end - expect->start != 8 ||
                                       memcmp(js + expect->start, digest, 8) != 0);
    char text[160];
    if (mismatch) {
        snprintf(text, sizeof text, "%s mismatch: expected %.*s, got %s", name,
                 expect->end - expect->start > 16 ? 16 : expect->end - expect->start,
                 js + expect->start, digest);
        free(tokens);
        return fail(err, text);
    }
    free(tokens);

    job_plugin_string_t line;
    snprintf(text, sizeof text, "%s of %zu bytes: %s", name, n, digest);
    job_plugin_string_set(&line, text);  // borrowed: the host copies it during the call
    jobhost_plugin_host_log(JOBHOST_PLUGIN_TYPES_LOG_LEVEL_INFO, &line);

    snprintf(text, sizeof text, "{\"algorithm\": \"%s\", \"bytes\": %zu, \"checksum\": \"%s\"}",
             name, n, digest);
    ret->is_some = true;
    job_plugin_string_dup(&ret->val, text);
    return true;
}
