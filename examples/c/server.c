/* A small C storage server on filemr (docs/c-api.md).
 *
 *     filemr-c-server ADDR PORT FILE
 *
 * It listens with librdmacm on ADDR:PORT, allocates its own protection domain on the
 * listening device and starts filemr over it, registers FILE, accepts one peer on a queue
 * pair of its own, grants the peer a key to the file, and then runs one loop: the peer's
 * messages arrive on the queue pair (COMMIT, RETURN, BYE), filemr's events on the event
 * fd (a RECALL is forwarded to the peer, AVAILABLE tells it to resume). The peer moves the
 * file's bytes itself with RDMA READ and WRITE.
 *
 * Messages are 64-byte text SENDs: KEY addr rkey len | COMMIT off len | COMMITTED |
 * RECALL | RETURN | AVAIL | BYE. One thread: the completion queue is adopted as
 * FILEMR_CQ_SHARED and polled with filemr_cq_poll, so filemr's own completions never
 * reach this code and its blocking calls (grant, returned) can run on this thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <filemr.h>
#include <rdma/rdma_cma.h>

#define MSG 64
#define RECVS 8

static void die(const char *what, int rc)
{
    char msg[512];
    filemr_last_error(msg, sizeof msg);
    fprintf(stderr, "server: %s failed: %s [%s]\n", what, strerror(rc), msg);
    exit(1);
}

#define TRY(call)                             \
    do {                                      \
        int rc_ = (call);                     \
        if (rc_ != 0)                         \
            die(#call, rc_);                  \
    } while (0)

#define NONNULL(expr, what)                                               \
    do {                                                                  \
        if (!(expr)) {                                                    \
            fprintf(stderr, "server: %s failed: %s\n", what, strerror(errno)); \
            exit(1);                                                      \
        }                                                                 \
    } while (0)

struct conn {
    struct ibv_qp *qp;
    struct ibv_mr *mr;
    char bufs[RECVS + 1][MSG]; /* RECVS receive slots, then the send slot */
};

static void post_recv(struct conn *c, int slot)
{
    struct ibv_sge sge = { (uintptr_t)c->bufs[slot], MSG, c->mr->lkey };
    struct ibv_recv_wr wr = { .wr_id = (uint64_t)slot, .sg_list = &sge, .num_sge = 1 }, *bad;
    TRY(ibv_post_recv(c->qp, &wr, &bad));
}

/* One SEND, signaled; its completion is polled by the loop like any other. */
static void send_msg(struct conn *c, const char *text)
{
    snprintf(c->bufs[RECVS], MSG, "%s", text);
    struct ibv_sge sge = { (uintptr_t)c->bufs[RECVS], MSG, c->mr->lkey };
    struct ibv_send_wr wr = { .wr_id = 1000, .sg_list = &sge, .num_sge = 1,
                              .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED },
                       *bad;
    TRY(ibv_post_send(c->qp, &wr, &bad));
    printf("sent %s\n", text);
}

static const char *event_name(uint32_t kind)
{
    switch (kind) {
    case FILEMR_EVENT_REVOKING: return "REVOKING";
    case FILEMR_EVENT_RECALL: return "RECALL";
    case FILEMR_EVENT_RETURNED: return "RETURNED";
    case FILEMR_EVENT_FENCED: return "FENCED";
    case FILEMR_EVENT_RETARGETED: return "RETARGETED";
    case FILEMR_EVENT_REVOKED: return "REVOKED";
    case FILEMR_EVENT_REBUILT: return "REBUILT";
    case FILEMR_EVENT_AVAILABLE: return "AVAILABLE";
    case FILEMR_EVENT_LOST: return "LOST";
    default: return "?";
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ADDR PORT FILE\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* The server's own verbs objects: a listening id, its device, a PD. */
    struct rdma_addrinfo hints = { .ai_flags = RAI_PASSIVE, .ai_port_space = RDMA_PS_TCP }, *res;
    TRY(rdma_getaddrinfo(argv[1], argv[2], &hints, &res) ? errno : 0);
    struct rdma_cm_id *listen_id;
    TRY(rdma_create_ep(&listen_id, res, NULL, NULL) ? errno : 0);
    TRY(rdma_listen(listen_id, 1) ? errno : 0);
    NONNULL(listen_id->verbs, "binding to a device");
    struct ibv_pd *pd = ibv_alloc_pd(listen_id->verbs);
    NONNULL(pd, "ibv_alloc_pd");

    /* filemr over them, and the file. */
    filemr_manager *m;
    TRY(filemr_manager_adopt(listen_id->verbs, pd, 0, &m));
    filemr_region *region;
    TRY(filemr_register(m, argv[3], 0, 0, FILEMR_ACCESS_READ_WRITE, &region));
    filemr_region_info ri;
    TRY(filemr_region_get_info(region, &ri));
    printf("registered %s: %" PRIu64 " bytes, strategy %u\n", argv[3], ri.len, ri.strategy);
    printf("listening\n");

    /* One peer, on a queue pair in our PD. */
    struct rdma_cm_id *id;
    TRY(rdma_get_request(listen_id, &id) ? errno : 0);
    struct ibv_cq *cq = ibv_create_cq(id->verbs, 64, NULL, NULL, 0);
    NONNULL(cq, "ibv_create_cq");
    struct ibv_qp_init_attr qa = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                   .cap = { .max_send_wr = 32, .max_recv_wr = RECVS,
                                            .max_send_sge = 1, .max_recv_sge = 1 } };
    TRY(rdma_create_qp(id, pd, &qa) ? errno : 0);
    struct conn c = { .qp = id->qp };
    c.mr = ibv_reg_mr(pd, c.bufs, sizeof c.bufs, IBV_ACCESS_LOCAL_WRITE);
    NONNULL(c.mr, "ibv_reg_mr");
    for (int i = 0; i < RECVS; i++)
        post_recv(&c, i);
    struct rdma_conn_param cp = { .responder_resources = 1, .initiator_depth = 1 };
    TRY(rdma_accept(id, &cp) ? errno : 0);

    filemr_cq *fcq;
    filemr_qp *fqp;
    filemr_grant *grant;
    filemr_grant_info gi;
    TRY(filemr_cq_adopt(m, cq, FILEMR_CQ_SHARED, &fcq));
    TRY(filemr_qp_adopt(m, fcq, id->qp, &fqp));
    TRY(filemr_region_grant(region, fqp, &grant));
    TRY(filemr_grant_get_info(grant, &gi));
    char text[MSG];
    snprintf(text, sizeof text, "KEY %" PRIu64 " %u %" PRIu64, gi.addr, gi.rkey, gi.len);
    send_msg(&c, text);

    int efd;
    TRY(filemr_manager_event_fd(m, &efd));
    int done = 0;
    while (!done) {
        struct pollfd pfd = { .fd = efd, .events = POLLIN };
        if (poll(&pfd, 1, 1) < 0 && errno != EINTR)
            die("poll", errno);
        filemr_event ev;
        while (filemr_manager_next_event(m, &ev) == 0) {
            printf("event %s region %" PRIu64 " grant %" PRIu64 "\n", event_name(ev.kind),
                   ev.region, ev.grant);
            if (ev.kind == FILEMR_EVENT_RECALL && ev.grant == gi.id)
                send_msg(&c, "RECALL");
            else if (ev.kind == FILEMR_EVENT_AVAILABLE && ev.grant == gi.id)
                send_msg(&c, "AVAIL");
            else if (ev.kind == FILEMR_EVENT_LOST || ev.kind == FILEMR_EVENT_FENCED) {
                fprintf(stderr, "server: the region was %s\n", event_name(ev.kind));
                return 1;
            }
        }
        struct ibv_wc wcs[8];
        int n;
        TRY(filemr_cq_poll(fcq, wcs, 8, &n));
        for (int i = 0; i < n; i++) {
            if (wcs[i].status != IBV_WC_SUCCESS) {
                fprintf(stderr, "server: completion %" PRIu64 ": %s\n", wcs[i].wr_id,
                        ibv_wc_status_str(wcs[i].status));
                return 1;
            }
            if (wcs[i].opcode != IBV_WC_RECV)
                continue;
            int slot = (int)wcs[i].wr_id;
            char *msg = c.bufs[slot];
            msg[MSG - 1] = 0;
            printf("got %s\n", msg);
            size_t off, len;
            if (sscanf(msg, "COMMIT %zu %zu", &off, &len) == 2) {
                TRY(filemr_region_commit(region, off, len));
                send_msg(&c, "COMMITTED");
            } else if (strcmp(msg, "RETURN") == 0) {
                TRY(filemr_grant_returned(grant));
            } else if (strcmp(msg, "BYE") == 0) {
                done = 1;
            }
            post_recv(&c, slot);
        }
    }

    /* filemr's handles first (the region commits on free), then our own objects. */
    TRY(filemr_grant_free(grant));
    TRY(filemr_region_free(region));
    TRY(filemr_qp_free(fqp));
    TRY(filemr_cq_free(fcq));
    TRY(filemr_manager_close(m));
    rdma_disconnect(id);
    rdma_destroy_qp(id);
    ibv_dereg_mr(c.mr);
    ibv_destroy_cq(cq);
    rdma_destroy_ep(id);
    ibv_dealloc_pd(pd);
    rdma_destroy_ep(listen_id);
    rdma_freeaddrinfo(res);
    printf("server done\n");
    return 0;
}
