/*
 * A complete orloj-rt client in C: libzmq + msgpack-c, no orloj-rt code.
 *
 *   build:  cc -O2 -o orloj_client orloj_client.c -lzmq -lmsgpackc
 *           (Debian/Ubuntu: apt-get install libzmq3-dev libmsgpack-dev)
 *   run:    ./orloj_client tcp://127.0.0.1:5555 [TIMEOUT_MS]
 *
 * It asks `health`, then sends one `infer` request to the built-in `early_exit` model
 * (8 int64 tokens; the first token picks the exit layer) and prints the reply: status,
 * timing, and each output; then it cancels that request (too late: the cancel's result
 * is "answered"), to show `op: "cancel"`. Exit code 0 when the three answers are `ok`.
 *
 * The wire format (docs/protocol.md): a DEALER sends [b"", header, data_0, ...] where
 * the header is a msgpack map and each data frame holds one tensor's raw little-endian
 * C-order bytes; the reply is [b"", header, data_0, ...] in the same shape.
 */
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define MAX_FRAMES 16

static long reply_timeout_ms = 10000; /* how long to wait for each reply (argv[2]) */

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Sends [b"", header, data...] as one multi-part message. */
static int send_request(void *sock, const msgpack_sbuffer *header,
                        const void *data, size_t data_len) {
    if (zmq_send(sock, "", 0, ZMQ_SNDMORE) < 0) return -1;
    if (zmq_send(sock, header->data, header->size, data ? ZMQ_SNDMORE : 0) < 0) return -1;
    if (data && zmq_send(sock, data, data_len, 0) < 0) return -1;
    return 0;
}

/* Receives one reply into frames[]; returns the number of frames after the delimiter. */
static int recv_reply(void *sock, zmq_msg_t frames[MAX_FRAMES]) {
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, reply_timeout_ms) <= 0) {
        fprintf(stderr, "no reply within %ld ms: is the server running?\n", reply_timeout_ms);
        return -1;
    }
    int n = 0, more = 1, first = 1;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, 0) < 0) return -1;
        more = zmq_msg_more(&part);
        if (first) { /* the empty delimiter */
            first = 0;
            zmq_msg_close(&part);
            continue;
        }
        if (n < MAX_FRAMES) frames[n++] = part; else zmq_msg_close(&part);
    }
    return n;
}

/* The value of `key` in a msgpack map, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *key) {
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == n &&
            memcmp(kv->key.via.str.ptr, key, n) == 0)
            return &kv->val;
    }
    return NULL;
}

static int str_is(const msgpack_object *o, const char *s) {
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* Prints one output tensor (float32 and int64 shown by value; others by size). */
static void print_output(const msgpack_object *meta, zmq_msg_t *frame) {
    const msgpack_object *name = map_get(meta, "name");
    const msgpack_object *dtype = map_get(meta, "dtype");
    const msgpack_object *shape = map_get(meta, "shape");
    printf("  output %.*s: %.*s [", (int)name->via.str.size, name->via.str.ptr,
           (int)dtype->via.str.size, dtype->via.str.ptr);
    for (uint32_t i = 0; shape && i < shape->via.array.size; i++)
        printf(i ? ", %" PRId64 : "%" PRId64, shape->via.array.ptr[i].via.i64);
    printf("] =");
    size_t size = zmq_msg_size(frame);
    const unsigned char *bytes = zmq_msg_data(frame);
    if (str_is(dtype, "float32")) {
        for (size_t i = 0; i < size / 4; i++) {
            float v;
            memcpy(&v, bytes + 4 * i, 4); /* the wire is little-endian, as is x86/ARM */
            printf(" %.4f", v);
        }
    } else if (str_is(dtype, "int64")) {
        for (size_t i = 0; i < size / 8; i++) {
            int64_t v;
            memcpy(&v, bytes + 8 * i, 8);
            printf(" %" PRId64, v);
        }
    } else {
        printf(" (%zu bytes)", size);
    }
    printf("\n");
}

/* Decodes a reply header; prints it; returns 0 if its status is ok. */
static int show_reply(zmq_msg_t frames[], int n, int expect_outputs) {
    msgpack_unpacked msg;
    msgpack_unpacked_init(&msg);
    int rc = 1;
    if (n < 1 || msgpack_unpack_next(&msg, zmq_msg_data(&frames[0]), zmq_msg_size(&frames[0]),
                                     NULL) != MSGPACK_UNPACK_SUCCESS) {
        fprintf(stderr, "the reply header is not msgpack\n");
        goto done;
    }
    const msgpack_object *h = &msg.data;
    const msgpack_object *status = map_get(h, "status");
    const msgpack_object *id = map_get(h, "id");
    printf("reply to id %" PRId64 ": status %.*s\n", id ? id->via.i64 : -1,
           (int)status->via.str.size, status->via.str.ptr);
    if (!str_is(status, "ok")) {
        const msgpack_object *err = map_get(h, "error");
        if (err) printf("  error: %.*s\n", (int)err->via.str.size, err->via.str.ptr);
        goto done;
    }
    const msgpack_object *timing = map_get(h, "timing");
    if (timing)
        printf("  timing: queue %" PRId64 " us, exec %" PRId64 " us, total %" PRId64
               " us, batch of %" PRId64 "\n",
               map_get(timing, "queue_us")->via.i64, map_get(timing, "exec_us")->via.i64,
               map_get(timing, "total_us")->via.i64, map_get(timing, "batch_size")->via.i64);
    const msgpack_object *outputs = map_get(h, "outputs");
    if (expect_outputs) {
        if (!outputs || (int)outputs->via.array.size != n - 1) {
            fprintf(stderr, "outputs do not match the data frames\n");
            goto done;
        }
        for (uint32_t i = 0; i < outputs->via.array.size; i++)
            print_output(&outputs->via.array.ptr[i], &frames[1 + i]);
    } else {
        const msgpack_object *result = map_get(h, "result");
        if (result && result->type == MSGPACK_OBJECT_STR) { /* a cancel's: where it was */
            printf("  result: %.*s\n", (int)result->via.str.size, result->via.str.ptr);
        } else {
            const msgpack_object *st = result ? map_get(result, "status") : NULL;
            if (st) printf("  server status: %.*s\n", (int)st->via.str.size, st->via.str.ptr);
        }
    }
    rc = 0;
done:
    msgpack_unpacked_destroy(&msg);
    for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
    return rc;
}

int main(int argc, char **argv) {
    const char *endpoint = argc > 1 ? argv[1] : "tcp://127.0.0.1:5555";
    if (argc > 2) reply_timeout_ms = strtol(argv[2], NULL, 10);
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    /* A routing id of our own, kept across reconnects: replies in flight when the
       connection broke still reach us (docs/protocol.md, "Frame size"). Random bytes; the
       first must not be zero. */
    unsigned char routing_id[17] = "c";
    FILE *urandom = fopen("/dev/urandom", "rb");
    if (urandom == NULL || fread(routing_id + 1, 1, 16, urandom) != 16) {
        fprintf(stderr, "cannot read /dev/urandom for a routing id\n");
        return 1;
    }
    fclose(urandom);
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, routing_id, sizeof routing_id);
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 2;
    }
    int failed = 0;
    zmq_msg_t frames[MAX_FRAMES];
    msgpack_sbuffer buf;
    msgpack_packer pk;

    /* 1. health: {"v": 1, "id": 1, "op": "health"}, no data frames */
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "v");  msgpack_pack_int(&pk, 1);
    pack_str(&pk, "id"); msgpack_pack_int(&pk, 1);
    pack_str(&pk, "op"); pack_str(&pk, "health");
    if (send_request(sock, &buf, NULL, 0) != 0) return 2;
    msgpack_sbuffer_destroy(&buf);
    int n = recv_reply(sock, frames);
    failed |= n < 0 || show_reply(frames, n, 0);

    /* 2. infer: 8 tokens for early_exit; token 0 = 3 exits after layer 3 */
    int64_t tokens[8] = {3, 17, 99, 250, 7, 61, 5, 42};
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 7);
    pack_str(&pk, "v");      msgpack_pack_int(&pk, 1);
    pack_str(&pk, "id");     msgpack_pack_int(&pk, 2);
    pack_str(&pk, "op");     pack_str(&pk, "infer");
    pack_str(&pk, "model");  pack_str(&pk, "early_exit");
    pack_str(&pk, "app");    pack_str(&pk, "c-client");
    pack_str(&pk, "slo_ms"); msgpack_pack_double(&pk, 1000.0);
    pack_str(&pk, "inputs");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "name");  pack_str(&pk, "tokens");
    pack_str(&pk, "dtype"); pack_str(&pk, "int64");
    pack_str(&pk, "shape"); msgpack_pack_array(&pk, 1); msgpack_pack_int(&pk, 8);
    if (send_request(sock, &buf, tokens, sizeof tokens) != 0) return 2;
    msgpack_sbuffer_destroy(&buf);
    n = recv_reply(sock, frames);
    failed |= n < 0 || show_reply(frames, n, 1);

    /* 3. cancel: {"v": 1, "id": 3, "op": "cancel", "target": 2}. Request 2 is answered
       already, so the result is "answered"; sent while it waits, it would be "queued" or
       "running", and request 2 would be answered "cancelled". */
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    pack_str(&pk, "v");      msgpack_pack_int(&pk, 1);
    pack_str(&pk, "id");     msgpack_pack_int(&pk, 3);
    pack_str(&pk, "op");     pack_str(&pk, "cancel");
    pack_str(&pk, "target"); msgpack_pack_int(&pk, 2);
    if (send_request(sock, &buf, NULL, 0) != 0) return 2;
    msgpack_sbuffer_destroy(&buf);
    n = recv_reply(sock, frames);
    failed |= n < 0 || show_reply(frames, n, 0);

    zmq_close(sock);
    zmq_ctx_term(ctx);
    return failed ? 1 : 0;
}
