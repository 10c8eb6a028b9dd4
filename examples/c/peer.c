/* The peer of examples/c/server.c: a plain librdmacm client (no filemr) that reads and
 * writes the server's file one-sided with the key it was sent, and follows a recall.
 *
 *     filemr-c-peer SERVER_ADDR PORT SOURCE_ADDR
 *
 * 1. gets KEY; WRITEs pattern A at 0, READs it back, asks the server to COMMIT it;
 *    prints "ready" (a writer may now open the file);
 * 2. on RECALL: WRITEs pattern B at 4096 (its work in flight), COMMITs it, RETURNs;
 * 3. on AVAIL: READs 8192 bytes with the same key (A then B, from the rebuilt region),
 *    WRITEs pattern C at 8192, COMMITs it, says BYE.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>

#define MSG 64
#define RECVS 8
#define PAGE 4096

static void fail(const char *what)
{
    fprintf(stderr, "peer: %s failed: %s\n", what, strerror(errno));
    exit(1);
}

#define CHECK(expr, what)   \
    do {                    \
        if (expr)           \
            fail(what);     \
    } while (0)

static struct rdma_cm_id *id;
static struct ibv_mr *msg_mr, *data_mr;
static char msgs[RECVS + 1][MSG];
static unsigned char data[4 * PAGE];

static unsigned char pattern(char which, size_t i)
{
    switch (which) {
    case 'A': return (unsigned char)(i * 7 + 1);
    case 'B': return (unsigned char)(i * 11 + 3);
    default: return (unsigned char)(i * 13 + 5);
    }
}

static void send_msg(const char *text)
{
    snprintf(msgs[RECVS], MSG, "%s", text);
    struct ibv_wc wc;
    CHECK(rdma_post_send(id, NULL, msgs[RECVS], MSG, msg_mr, IBV_SEND_SIGNALED), "send");
    CHECK(rdma_get_send_comp(id, &wc) <= 0 || wc.status != IBV_WC_SUCCESS, "send completion");
    printf("sent %s\n", text);
}

/* The next message from the server (its receive slot is posted again). */
static void recv_msg(char *out)
{
    struct ibv_wc wc;
    CHECK(rdma_get_recv_comp(id, &wc) <= 0 || wc.status != IBV_WC_SUCCESS, "receive");
    int slot = (int)wc.wr_id;
    memcpy(out, msgs[slot], MSG);
    out[MSG - 1] = 0;
    CHECK(rdma_post_recv(id, (void *)(uintptr_t)slot, msgs[slot], MSG, msg_mr), "post recv");
    printf("got %s\n", out);
}

static void expect_msg(const char *want)
{
    char got[MSG];
    recv_msg(got);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "peer: expected %s, got %s\n", want, got);
        exit(1);
    }
}

/* One-sided WRITE or READ of `len` bytes between data[local..] and the server's
 * addr + remote, with `rkey`; fails on anything but success. */
static void rdma_io(int write, size_t local, uint64_t addr, uint32_t rkey, size_t remote,
                    size_t len)
{
    struct ibv_wc wc;
    int rc = write ? rdma_post_write(id, NULL, data + local, len, data_mr, IBV_SEND_SIGNALED,
                                     addr + remote, rkey)
                   : rdma_post_read(id, NULL, data + local, len, data_mr, IBV_SEND_SIGNALED,
                                    addr + remote, rkey);
    CHECK(rc, write ? "post write" : "post read");
    CHECK(rdma_get_send_comp(id, &wc) <= 0, "completion");
    if (wc.status != IBV_WC_SUCCESS) {
        fprintf(stderr, "peer: %s: %s\n", write ? "write" : "read", ibv_wc_status_str(wc.status));
        exit(1);
    }
}

static void fill(size_t at, char which)
{
    for (size_t i = 0; i < PAGE; i++)
        data[at + i] = pattern(which, i);
}

static void check(size_t at, char which, const char *what)
{
    for (size_t i = 0; i < PAGE; i++) {
        if (data[at + i] != pattern(which, i)) {
            fprintf(stderr, "peer: %s: byte %zu is %u, not pattern %c's %u\n", what, i,
                    data[at + i], which, pattern(which, i));
            exit(1);
        }
    }
    printf("%s: pattern %c\n", what, which);
}

static void commit(size_t off)
{
    char text[MSG];
    snprintf(text, sizeof text, "COMMIT %zu %d", off, PAGE);
    send_msg(text);
    expect_msg("COMMITTED");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SERVER_ADDR PORT SOURCE_ADDR\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sockaddr_in src = { .sin_family = AF_INET };
    CHECK(inet_pton(AF_INET, argv[3], &src.sin_addr) != 1, "parsing SOURCE_ADDR");
    struct rdma_addrinfo hints = { .ai_port_space = RDMA_PS_TCP,
                                   .ai_src_addr = (struct sockaddr *)&src,
                                   .ai_src_len = sizeof src },
                         *res;
    CHECK(rdma_getaddrinfo(argv[1], argv[2], &hints, &res), "rdma_getaddrinfo");
    struct ibv_qp_init_attr qa = { .qp_type = IBV_QPT_RC, .sq_sig_all = 1,
                                   .cap = { .max_send_wr = 16, .max_recv_wr = RECVS,
                                            .max_send_sge = 1, .max_recv_sge = 1 } };
    CHECK(rdma_create_ep(&id, res, NULL, &qa), "rdma_create_ep");
    msg_mr = rdma_reg_msgs(id, msgs, sizeof msgs);
    data_mr = ibv_reg_mr(id->pd, data, sizeof data, IBV_ACCESS_LOCAL_WRITE);
    CHECK(!msg_mr || !data_mr, "registering buffers");
    for (int i = 0; i < RECVS; i++)
        CHECK(rdma_post_recv(id, (void *)(uintptr_t)i, msgs[i], MSG, msg_mr), "post recv");
    struct rdma_conn_param cp = { .responder_resources = 1, .initiator_depth = 1,
                                  .retry_count = 7, .rnr_retry_count = 7 };
    CHECK(rdma_connect(id, &cp), "rdma_connect");

    char msg[MSG];
    uint64_t addr, len;
    uint32_t rkey;
    recv_msg(msg);
    if (sscanf(msg, "KEY %" SCNu64 " %" SCNu32 " %" SCNu64, &addr, &rkey, &len) != 3 ||
        len < 3 * PAGE) {
        fprintf(stderr, "peer: bad key message %s\n", msg);
        return 1;
    }

    fill(0, 'A');
    rdma_io(1, 0, addr, rkey, 0, PAGE);
    memset(data, 0, sizeof data);
    rdma_io(0, 0, addr, rkey, 0, PAGE);
    check(0, 'A', "read back before the break");
    commit(0);
    printf("ready\n");

    expect_msg("RECALL");
    fill(PAGE, 'B');
    rdma_io(1, PAGE, addr, rkey, PAGE, PAGE);
    commit(PAGE);
    send_msg("RETURN");

    expect_msg("AVAIL");
    memset(data, 0, sizeof data);
    rdma_io(0, 0, addr, rkey, 0, 2 * PAGE);
    check(0, 'A', "read after the rebuild, same key, page 0");
    check(PAGE, 'B', "read after the rebuild, same key, page 1");
    fill(2 * PAGE, 'C');
    rdma_io(1, 2 * PAGE, addr, rkey, 2 * PAGE, PAGE);
    commit(2 * PAGE);
    send_msg("BYE");

    rdma_disconnect(id);
    rdma_dereg_mr(data_mr);
    rdma_dereg_mr(msg_mr);
    rdma_destroy_ep(id);
    rdma_freeaddrinfo(res);
    printf("peer done\n");
    return 0;
}
