/*
 * sanlb-loadgen: a rate-controlled, verifying iSCSI load generator for the
 * sanlb lab.
 *
 * Why C: no iSCSI initiator exists as a Rust crate, and the lab needs a real
 * initiator whose behaviour across address moves is the thing under test:
 * libiscsi (libiscsi-dev) reconnects by itself, replays outstanding commands
 * on the new connection and can suppress the Unit Attention that follows a
 * reconnect. Its own tools do not do the job: iscsi-perf only reads and has
 * no rate limit, and there is no iscsi-dd. So this is a small program on
 * libiscsi's asynchronous C API, compiled by xtask (`gcc ... -liscsi`) when
 * a lab needs it; building xtask itself never needs libiscsi.
 *
 * One process drives any number of targets (one iSCSI session each) from one
 * poll loop:
 *
 *   sanlb-loadgen [OPTIONS] --target SPEC [--target SPEC ...]
 *
 *   SPEC = URL[,KEY=VALUE...], URL = iscsi://ADDR[:PORT]/IQN/LUN, keys:
 *     name=LABEL    label in the output (default: the address)
 *     rate=BYTES    byte rate limit per second (k/M/G suffixes, 1024-based;
 *                   0 = none, the default)
 *     iops=N        I/O rate limit per second instead
 *     read=PCT      share of reads, 0..100 (default 70)
 *     bs=BYTES      I/O size, a multiple of the LUN's block size (default 16k;
 *                   reads above 16k see recurring 70-80 ms gaps from tgtd
 *                   in this lab, which would hide the stall of a move)
 *     qd=N          queue depth (default 4)
 *     lba=N         first LBA of the region used (default 0)
 *     blocks=N      region length in LBAs (default: to the end of the LUN)
 *     verify        write the whole region first, and read all of it back
 *                   and check it at the end (reads are always checked
 *                   against what this run wrote)
 *
 *   OPTIONS:
 *     --initiator IQN     initiator name (default iqn.2026-11.test.sanlb:loadgen)
 *     --duration SECS     how long to run the workload (default 10)
 *     --interval SECS     report period (default 1)
 *     --stall-event SECS  report every stall at least this long (default 0.05)
 *     --seed N            seeds the random choices and write generations
 *     --drain-timeout S   bound for outstanding I/O at the end (default 30)
 *     --nop-after SECS    ping a session with a NOP-Out when its I/O has made
 *                         no progress for this long (default 0.2; 0 = never)
 *
 * Why the NOP-Out: when an address moves while every byte the host sent is
 * acknowledged and it only waits for responses, the host sends nothing, so
 * nothing reaches the new gateway to be reset, and the session hangs until
 * TCP keepalive (30 s in libiscsi). The ping makes the host transmit; the
 * new gateway answers with a reset and libiscsi reconnects at once. Linux's
 * open-iscsi initiator pings idle sessions the same way (noop_out_interval).
 *
 * Every write of a chunk (one bs-sized I/O unit of the region) carries a new
 * generation number; each 512-byte sector holds a header (magic, generation,
 * byte offset) and words derived from (byte offset, generation). A read of a
 * chunk whose last write completed is compared with what that write wrote,
 * so a lost, stale or misplaced write is a verify error. No two I/Os to one
 * chunk are ever in flight together.
 *
 * Output: JSON lines on stdout.
 *   {"event":"report","target":..,"t":..,"unix":..,"iops":..,"read_ops":..,
 *    "write_ops":..,"read_bytes":..,"write_bytes":..,"errors":..,
 *    "verify_errors":..,"verified":..,"reconnects":..,"inflight":..,
 *    "stall_s":..,"stall_max_s":..}        every interval per target
 *     (counters are totals since the start; iops and stall_s are for the
 *      interval; stall_s is the longest time with I/O outstanding and none
 *      completing; stall_max_s the longest of the run)
 *   {"event":"stall","target":..,"start_unix":..,"duration_s":..}
 *   {"event":"reconnect","target":..,"unix":..}
 *   {"event":"phase","target":..,"phase":"prefill|run|drain|final-verify|done"}
 *   {"event":"final","target":.., ..counters.., "final_verified":..,
 *    "final_verify_errors":..}           once per target at the end
 * Diagnostics (libiscsi's log, errors, mismatches) go to stderr.
 *
 * Exit: 0 all I/O succeeded and verified, 1 I/O or verify errors, 2 bad
 * usage, 3 a target could not be reached or its session was lost for good.
 * SIGTERM/SIGINT end the workload early (drain, final lines, no final
 * verify pass). SIGUSR1 ends it as if --duration had passed (drain, final
 * verify pass, final lines): a test whose scenario is over need not wait
 * out a duration chosen to outlast it. An alarm bounds the whole run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define MAGIC 0x53414e4cU /* "SANL" */
#define SECTOR 512

enum phase { PREFILL, RUN, DRAIN, FINAL_VERIFY, DONE, DEAD };
static const char *phase_name[] = {"prefill", "run", "drain", "final-verify", "done", "dead"};

struct target;

struct io {
	struct target *t;
	int busy;
	int write;
	int final;
	uint64_t chunk;
	uint32_t gen;
	unsigned char *buf;
};

struct target {
	char *url_str;
	char label[64];
	char addr[64];
	struct iscsi_context *iscsi;
	int lun;
	/* spec */
	double rate;      /* bytes/s, 0 = unlimited */
	double iops;      /* I/Os per second, 0 = unlimited */
	int read_pct;
	uint32_t bs;
	int qd;
	uint64_t lba;
	uint64_t blocks;  /* 0 = to the end */
	int verify;
	/* geometry */
	uint32_t block_size;
	uint64_t nchunks;
	uint32_t *chunk_gen;  /* last completed write's generation, 0 = unknown */
	uint8_t *chunk_busy;
	uint32_t next_gen;
	/* state */
	enum phase phase;
	uint64_t cursor;      /* prefill / final verify position */
	struct io *ios;
	int inflight;
	double tokens;
	double last_refill;
	double progress;      /* last completion, or when I/O became outstanding */
	double hup_until;     /* do not poll a hung-up socket before this */
	double last_nop;      /* when the last NOP-Out ping was sent */
	/* totals */
	uint64_t read_ops, write_ops, read_bytes, write_bytes;
	uint64_t errors, verify_errors, verified, reconnects;
	uint64_t final_verified, final_verify_errors;
	double stall_max;
	/* interval */
	uint64_t iv_ops;
	double iv_stall;
};

static struct target *targets;
static int ntargets;
static struct target *current; /* whose iscsi_service is running: for the log */
static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t end_requested;
static double stall_event = 0.05;
static double nop_after = 0.2;
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double t0;

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t rnd(void)
{
	rng_state = splitmix(rng_state);
	return rng_state;
}

static void diag(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "[%.3f] ", mono() - t0);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "sanlb-loadgen: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nusage: sanlb-loadgen [OPTIONS] --target URL[,KEY=VALUE...] ...\n"
			"(see the comment at the top of sanlb-loadgen.c)\n");
	exit(2);
}

/* Byte count with an optional k/M/G suffix (1024-based). */
static int parse_size(const char *s, double *out)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || v < 0)
		return -1;
	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= 1024 * 1024; end++; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
	}
	if (*end != '\0')
		return -1;
	*out = v;
	return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || *end != '\0' || errno || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static void parse_spec(struct target *t, char *spec)
{
	char *save = NULL;
	char *url = strtok_r(spec, ",", &save);
	if (!url || strncmp(url, "iscsi://", 8) != 0)
		usage_error("target %s: the spec must start with an iscsi:// URL", spec);
	t->url_str = strdup(url);
	t->read_pct = 70;
	t->bs = 16 * 1024;
	t->qd = 4;
	/* the address, for the default label */
	const char *h = url + 8;
	size_t n = strcspn(h, ":/");
	if (n >= sizeof(t->addr))
		n = sizeof(t->addr) - 1;
	memcpy(t->addr, h, n);
	t->addr[n] = '\0';
	snprintf(t->label, sizeof(t->label), "%s", t->addr);
	char *kv;
	while ((kv = strtok_r(NULL, ",", &save))) {
		char *eq = strchr(kv, '=');
		char *val = eq ? eq + 1 : NULL;
		if (eq)
			*eq = '\0';
		double d;
		uint64_t u;
		if (!strcmp(kv, "verify") && !val) {
			t->verify = 1;
		} else if (!val) {
			usage_error("target %s: %s needs a value", url, kv);
		} else if (!strcmp(kv, "name")) {
			if (strlen(val) >= sizeof(t->label) || val[strspn(val,
			    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")])
				usage_error("target %s: name %s: use up to 63 of [A-Za-z0-9._:-]", url, val);
			snprintf(t->label, sizeof(t->label), "%s", val);
		} else if (!strcmp(kv, "rate")) {
			if (parse_size(val, &t->rate))
				usage_error("target %s: rate %s is not a byte count", url, val);
		} else if (!strcmp(kv, "iops")) {
			if (parse_size(val, &t->iops))
				usage_error("target %s: iops %s is not a number", url, val);
		} else if (!strcmp(kv, "read")) {
			if (parse_u64(val, &u) || u > 100)
				usage_error("target %s: read %s is not a percentage", url, val);
			t->read_pct = (int)u;
		} else if (!strcmp(kv, "bs")) {
			if (parse_size(val, &d) || d < SECTOR || d > 16 * 1024 * 1024 ||
			    fmod(d, SECTOR) != 0)
				usage_error("target %s: bs %s must be a multiple of 512 up to 16M", url, val);
			t->bs = (uint32_t)d;
		} else if (!strcmp(kv, "qd")) {
			if (parse_u64(val, &u) || u < 1 || u > 256)
				usage_error("target %s: qd %s must be 1..256", url, val);
			t->qd = (int)u;
		} else if (!strcmp(kv, "lba")) {
			if (parse_u64(val, &t->lba))
				usage_error("target %s: lba %s is not a number", url, val);
		} else if (!strcmp(kv, "blocks")) {
			if (parse_u64(val, &t->blocks) || t->blocks == 0)
				usage_error("target %s: blocks %s must be a positive number", url, val);
		} else {
			usage_error("target %s: unknown key %s", url, kv);
		}
	}
}

static void log_fn(int level, const char *message)
{
	/* libiscsi repeats some messages on every service call while it waits
	 * to reconnect: print a repeat once, with its count. */
	static char last[512];
	static const struct target *last_who;
	static unsigned long repeats;
	const char *who = current ? current->label : "-";
	if (current == last_who && !strncmp(message, last, sizeof(last) - 1)) {
		repeats++;
		return;
	}
	if (repeats)
		diag("%s: libiscsi: (last message repeated %lu times)",
		     last_who ? last_who->label : "-", repeats);
	repeats = 0;
	last_who = current;
	snprintf(last, sizeof(last), "%s", message);
	diag("%s: libiscsi[%d]: %s", who, level, message);
	if (current && strstr(message, "reconnect was successful")) {
		current->reconnects++;
		printf("{\"event\":\"reconnect\",\"target\":\"%s\",\"unix\":%.6f}\n",
		       current->label, wall());
		fflush(stdout);
	}
}

static int connect_target(struct target *t, const char *initiator)
{
	struct iscsi_context *iscsi = iscsi_create_context(initiator);
	if (!iscsi) {
		diag("%s: cannot create an iSCSI context", t->label);
		return -1;
	}
	struct iscsi_url *url = iscsi_parse_full_url(iscsi, t->url_str);
	if (!url) {
		diag("%s: bad URL %s: %s", t->label, t->url_str, iscsi_get_error(iscsi));
		iscsi_destroy_context(iscsi);
		exit(2);
	}
	iscsi_set_log_level(iscsi, 2);
	iscsi_set_log_fn(iscsi, log_fn);
	iscsi_set_targetname(iscsi, url->target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	/* The first command after a reconnect would otherwise fail with a Unit
	 * Attention (29/00): the storage did not change, only the path. */
	iscsi_set_no_ua_on_reconnect(iscsi, 1);
	t->lun = url->lun;
	current = t;
	int rc = iscsi_full_connect_sync(iscsi, url->portal, url->lun);
	current = NULL;
	if (rc != 0) {
		diag("%s: login to %s failed: %s", t->label, url->portal, iscsi_get_error(iscsi));
		iscsi_destroy_url(url);
		iscsi_destroy_context(iscsi);
		return -1;
	}
	iscsi_destroy_url(url);
	struct scsi_task *task = iscsi_readcapacity16_sync(iscsi, t->lun);
	if (!task || task->status != SCSI_STATUS_GOOD) {
		diag("%s: READ CAPACITY(16) failed: %s", t->label, iscsi_get_error(iscsi));
		if (task)
			scsi_free_scsi_task(task);
		iscsi_destroy_context(iscsi);
		return -1;
	}
	struct scsi_readcapacity16 *rc16 = scsi_datain_unmarshall(task);
	if (!rc16) {
		diag("%s: cannot decode READ CAPACITY(16)", t->label);
		scsi_free_scsi_task(task);
		iscsi_destroy_context(iscsi);
		return -1;
	}
	t->block_size = rc16->block_length;
	uint64_t nblocks = rc16->returned_lba + 1;
	scsi_free_scsi_task(task);
	t->iscsi = iscsi;

	if (t->bs % t->block_size)
		usage_error("target %s: bs %u is not a multiple of the block size %u",
			    t->label, t->bs, t->block_size);
	if (t->lba >= nblocks)
		usage_error("target %s: lba %" PRIu64 " is past the end (%" PRIu64 " blocks)",
			    t->label, t->lba, nblocks);
	if (t->blocks == 0)
		t->blocks = nblocks - t->lba;
	if (t->lba + t->blocks > nblocks)
		usage_error("target %s: region %" PRIu64 "+%" PRIu64 " is past the end (%" PRIu64
			    " blocks)", t->label, t->lba, t->blocks, nblocks);
	t->nchunks = t->blocks * t->block_size / t->bs;
	if (t->nchunks == 0)
		usage_error("target %s: the region is smaller than one I/O", t->label);
	t->chunk_gen = calloc(t->nchunks, sizeof(*t->chunk_gen));
	t->chunk_busy = calloc(t->nchunks, 1);
	t->ios = calloc(t->qd, sizeof(*t->ios));
	if (!t->chunk_gen || !t->chunk_busy || !t->ios) {
		diag("out of memory");
		exit(3);
	}
	for (int i = 0; i < t->qd; i++) {
		t->ios[i].t = t;
		t->ios[i].buf = malloc(t->bs);
		if (!t->ios[i].buf) {
			diag("out of memory");
			exit(3);
		}
	}
	return 0;
}

/* Device byte offset of the start of a chunk. */
static uint64_t chunk_offset(const struct target *t, uint64_t chunk)
{
	return t->lba * t->block_size + chunk * t->bs;
}

static void fill(const struct target *t, uint64_t chunk, uint32_t gen, unsigned char *buf)
{
	uint64_t off = chunk_offset(t, chunk);
	for (uint32_t s = 0; s < t->bs; s += SECTOR) {
		uint64_t *w = (uint64_t *)(buf + s);
		uint64_t b = off + s;
		w[0] = ((uint64_t)gen << 32) | MAGIC;
		w[1] = b;
		for (int j = 2; j < SECTOR / 8; j++)
			w[j] = splitmix((b / 8 + j) ^ ((uint64_t)gen << 40));
	}
}

/* 0 if buf is what the write of generation gen put in chunk. */
static int check(const struct target *t, uint64_t chunk, uint32_t gen, const unsigned char *buf,
		 size_t len)
{
	static unsigned char *want;
	static size_t want_len;
	if (len != t->bs)
		return -1;
	if (want_len < len) {
		free(want);
		want = malloc(len);
		want_len = len;
	}
	fill(t, chunk, gen, want);
	if (memcmp(want, buf, len) == 0)
		return 0;
	for (uint32_t s = 0; s < t->bs; s += SECTOR) {
		if (memcmp(want + s, buf + s, SECTOR)) {
			const uint64_t *w = (const uint64_t *)(buf + s);
			diag("%s: verify error at byte %" PRIu64 ": expected generation %u, found "
			     "magic %08" PRIx64 " generation %" PRIu64 " offset %" PRIu64,
			     t->label, chunk_offset(t, chunk) + s, gen, w[0] & 0xffffffffULL,
			     w[0] >> 32, w[1]);
			break;
		}
	}
	return -1;
}

static void io_done(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
	struct io *io = private;
	struct target *t = io->t;
	struct scsi_task *task = command_data;
	double now = mono();
	(void)iscsi;

	double gap = now - t->progress;
	if (gap > t->iv_stall)
		t->iv_stall = gap;
	if (gap > t->stall_max)
		t->stall_max = gap;
	if (gap >= stall_event) {
		printf("{\"event\":\"stall\",\"target\":\"%s\",\"start_unix\":%.6f,"
		       "\"duration_s\":%.6f}\n", t->label, wall() - gap, gap);
		fflush(stdout);
	}
	t->progress = now;

	if (status != SCSI_STATUS_GOOD) {
		t->errors++;
		if (status == SCSI_STATUS_CHECK_CONDITION && task)
			diag("%s: %s at chunk %" PRIu64 " failed: %s (%s)", t->label,
			     io->write ? "write" : "read", io->chunk,
			     scsi_sense_key_str(task->sense.key), scsi_sense_ascq_str(task->sense.ascq));
		else
			diag("%s: %s at chunk %" PRIu64 " failed: status 0x%x: %s", t->label,
			     io->write ? "write" : "read", io->chunk, status, iscsi_get_error(t->iscsi));
		if (io->write)
			t->chunk_gen[io->chunk] = 0; /* unknown now */
	} else if (io->write) {
		t->write_ops++;
		t->write_bytes += t->bs;
		t->chunk_gen[io->chunk] = io->gen;
	} else {
		t->read_ops++;
		t->read_bytes += t->bs;
		uint32_t gen = t->chunk_gen[io->chunk];
		if (gen) {
			int bad = check(t, io->chunk, gen, task->datain.data, task->datain.size);
			if (io->final) {
				t->final_verified++;
				t->final_verify_errors += bad != 0;
			} else {
				t->verified++;
			}
			t->verify_errors += bad != 0;
		}
	}
	t->iv_ops++;
	if (task)
		scsi_free_scsi_task(task);
	t->chunk_busy[io->chunk] = 0;
	io->busy = 0;
	t->inflight--;
}

static void set_phase(struct target *t, enum phase p)
{
	t->phase = p;
	t->cursor = 0;
	printf("{\"event\":\"phase\",\"target\":\"%s\",\"phase\":\"%s\"}\n", t->label,
	       phase_name[p]);
	fflush(stdout);
}

static int submit(struct target *t, int write, uint64_t chunk, int final)
{
	struct io *io = NULL;
	for (int i = 0; i < t->qd; i++) {
		if (!t->ios[i].busy) {
			io = &t->ios[i];
			break;
		}
	}
	if (!io)
		return -1;
	io->write = write;
	io->final = final;
	io->chunk = chunk;
	uint64_t lba = t->lba + chunk * (t->bs / t->block_size);
	struct scsi_task *task;
	if (write) {
		io->gen = t->next_gen++;
		if (t->next_gen == 0)
			t->next_gen = 1;
		fill(t, chunk, io->gen, io->buf);
		task = iscsi_write16_task(t->iscsi, t->lun, lba, io->buf, t->bs, t->block_size,
					  0, 0, 0, 0, 0, io_done, io);
	} else {
		task = iscsi_read16_task(t->iscsi, t->lun, lba, t->bs, t->block_size,
					 0, 0, 0, 0, 0, io_done, io);
	}
	if (!task) {
		diag("%s: cannot queue a %s: %s", t->label, write ? "write" : "read",
		     iscsi_get_error(t->iscsi));
		t->errors++;
		return -1;
	}
	if (t->inflight == 0)
		t->progress = mono();
	io->busy = 1;
	t->chunk_busy[chunk] = 1;
	t->inflight++;
	return 0;
}

/* A random chunk with nothing in flight, or -1. */
static int64_t pick_chunk(struct target *t)
{
	for (int tries = 0; tries < 16; tries++) {
		uint64_t c = rnd() % t->nchunks;
		if (!t->chunk_busy[c])
			return (int64_t)c;
	}
	return -1;
}

/* Whether the rate limits allow another I/O now; if not, *wait is how long. */
static int tokens_allow(struct target *t, double now, double *wait)
{
	double per_s = 0, cost = 0;
	if (t->iops > 0) {
		per_s = t->iops;
		cost = 1;
	} else if (t->rate > 0) {
		per_s = t->rate;
		cost = t->bs;
	} else {
		return 1;
	}
	t->tokens += (now - t->last_refill) * per_s;
	t->last_refill = now;
	/* A burst of at most one queue's worth. */
	double cap = cost * t->qd;
	if (t->tokens > cap)
		t->tokens = cap;
	if (t->tokens >= cost)
		return 1;
	double w = (cost - t->tokens) / per_s;
	if (w < *wait)
		*wait = w;
	return 0;
}

static void take_token(struct target *t)
{
	if (t->iops > 0)
		t->tokens -= 1;
	else if (t->rate > 0)
		t->tokens -= t->bs;
}

/* Issues what the phase and the limits allow; shortens *wait to the time
 * the next token is due. */
static void issue(struct target *t, double now, double *wait)
{
	while (t->inflight < t->qd) {
		switch (t->phase) {
		case PREFILL:
			if (t->cursor >= t->nchunks) {
				if (t->inflight == 0)
					set_phase(t, RUN);
				return;
			}
			if (submit(t, 1, t->cursor, 0))
				return;
			t->cursor++;
			break;
		case RUN: {
			if (!tokens_allow(t, now, wait))
				return;
			int64_t c = pick_chunk(t);
			if (c < 0)
				return;
			int write = (int)(rnd() % 100) >= t->read_pct;
			if (submit(t, write, (uint64_t)c, 0))
				return;
			take_token(t);
			break;
		}
		case FINAL_VERIFY:
			while (t->cursor < t->nchunks && !t->chunk_gen[t->cursor])
				t->cursor++;
			if (t->cursor >= t->nchunks) {
				if (t->inflight == 0)
					set_phase(t, DONE);
				return;
			}
			if (submit(t, 0, t->cursor, 1))
				return;
			t->cursor++;
			break;
		default:
			return;
		}
	}
}

static void print_counters(const struct target *t)
{
	printf("\"read_ops\":%" PRIu64 ",\"write_ops\":%" PRIu64 ",\"read_bytes\":%" PRIu64
	       ",\"write_bytes\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
	       ",\"verified\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"inflight\":%d"
	       ",\"stall_max_s\":%.6f",
	       t->read_ops, t->write_ops, t->read_bytes, t->write_bytes, t->errors,
	       t->verify_errors, t->verified, t->reconnects, t->inflight, t->stall_max);
}

static void report(double now, double period)
{
	for (int i = 0; i < ntargets; i++) {
		struct target *t = &targets[i];
		/* A stall still going on counts in this interval too. */
		if (t->inflight > 0 && now - t->progress > t->iv_stall)
			t->iv_stall = now - t->progress;
		if (t->iv_stall > t->stall_max)
			t->stall_max = t->iv_stall;
		printf("{\"event\":\"report\",\"target\":\"%s\",\"t\":%.3f,\"unix\":%.6f,"
		       "\"phase\":\"%s\",\"iops\":%.1f,\"stall_s\":%.6f,",
		       t->label, now - t0, wall(), phase_name[t->phase],
		       t->iv_ops / period, t->iv_stall);
		print_counters(t);
		printf("}\n");
		t->iv_ops = 0;
		t->iv_stall = 0;
	}
	fflush(stdout);
}

static void nop_done(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
	(void)iscsi;
	(void)status;
	(void)command_data;
	(void)private;
}

/* Pings a session whose I/O has been stuck for nop_after (see the top). */
static void maybe_ping(struct target *t, double now)
{
	if (nop_after <= 0 || t->inflight == 0 || now - t->progress < nop_after ||
	    now - t->last_nop < nop_after)
		return;
	t->last_nop = now;
	current = t;
	if (iscsi_nop_out_async(t->iscsi, nop_done, NULL, 0, t) != 0)
		diag("%s: cannot queue a NOP-Out: %s", t->label, iscsi_get_error(t->iscsi));
	current = NULL;
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		end_requested = 1;
	else
		stop_requested = 1;
}

int main(int argc, char **argv)
{
	const char *initiator = "iqn.2026-11.test.sanlb:loadgen";
	double duration = 10, interval = 1, drain_timeout = 30;
	uint64_t seed = 1;

	t0 = mono();
	targets = calloc(argc, sizeof(*targets));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t u;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage_error("help");
		} else if (!v) {
			usage_error("%s needs a value", a);
		} else if (!strcmp(a, "--target")) {
			char *spec = strdup(v);
			parse_spec(&targets[ntargets++], spec);
			free(spec);
		} else if (!strcmp(a, "--initiator")) {
			initiator = v;
		} else if (!strcmp(a, "--duration")) {
			if (parse_size(v, &duration))
				usage_error("--duration %s is not a number of seconds", v);
		} else if (!strcmp(a, "--interval")) {
			if (parse_size(v, &interval) || interval < 0.01)
				usage_error("--interval %s must be at least 0.01 s", v);
		} else if (!strcmp(a, "--stall-event")) {
			if (parse_size(v, &stall_event))
				usage_error("--stall-event %s is not a number of seconds", v);
		} else if (!strcmp(a, "--drain-timeout")) {
			if (parse_size(v, &drain_timeout))
				usage_error("--drain-timeout %s is not a number of seconds", v);
		} else if (!strcmp(a, "--nop-after")) {
			if (parse_size(v, &nop_after))
				usage_error("--nop-after %s is not a number of seconds", v);
		} else if (!strcmp(a, "--seed")) {
			if (parse_u64(v, &u))
				usage_error("--seed %s is not a number", v);
			seed = u;
		} else {
			usage_error("unknown option %s", a);
		}
		i++;
	}
	if (ntargets == 0)
		usage_error("no --target");
	rng_state ^= splitmix(seed);

	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	/* Nothing below may run for ever: the login, the workload, the drain
	 * and a final verify pass of at most a few seconds. */
	alarm((unsigned)(duration + 2 * drain_timeout + 60));

	for (int i = 0; i < ntargets; i++) {
		struct target *t = &targets[i];
		if (connect_target(t, initiator))
			return 3;
		/* Generations differ between targets and runs with other seeds. */
		t->next_gen = (uint32_t)(splitmix(seed * 7919 + i) | 1);
		diag("%s: logged in to %s, block size %u, %" PRIu64 " chunks of %u bytes", t->label,
		     t->url_str, t->block_size, t->nchunks, t->bs);
	}
	double start = mono();
	for (int i = 0; i < ntargets; i++) {
		targets[i].last_refill = start;
		targets[i].progress = start;
		set_phase(&targets[i], targets[i].verify ? PREFILL : RUN);
	}

	double end = start + duration;
	double next_report = start + interval;
	double drain_deadline = 0;
	struct pollfd *pfd = calloc(ntargets, sizeof(*pfd));
	int lost = 0;

	for (;;) {
		double now = mono();
		if ((now >= end || stop_requested || end_requested) && !drain_deadline) {
			drain_deadline = now + drain_timeout;
			for (int i = 0; i < ntargets; i++)
				if (targets[i].phase == RUN || targets[i].phase == PREFILL)
					set_phase(&targets[i], DRAIN);
		}
		int active = 0;
		double wait = 0.1;
		for (int i = 0; i < ntargets; i++) {
			struct target *t = &targets[i];
			if (t->phase == DRAIN && t->inflight == 0) {
				if (t->verify && !stop_requested)
					set_phase(t, FINAL_VERIFY);
				else
					set_phase(t, DONE);
			}
			if (t->phase != DONE && t->phase != DEAD) {
				issue(t, now, &wait);
				maybe_ping(t, now);
				active++;
			}
		}
		if (!active)
			break;
		if (drain_deadline && now > drain_deadline) {
			for (int i = 0; i < ntargets; i++)
				if (targets[i].inflight > 0) {
					diag("%s: %d I/Os still outstanding after the drain timeout",
					     targets[i].label, targets[i].inflight);
					targets[i].errors += targets[i].inflight;
					lost = 1;
				}
			break;
		}
		if (next_report - now < wait)
			wait = next_report - now;
		if (wait < 0)
			wait = 0;
		for (int i = 0; i < ntargets; i++) {
			struct target *t = &targets[i];
			pfd[i].fd = -1;
			pfd[i].revents = 0;
			if (t->phase == DEAD)
				continue;
			if (now < t->hup_until) {
				if (wait > t->hup_until - now)
					wait = t->hup_until - now;
				continue;
			}
			int ev = iscsi_which_events(t->iscsi);
			/* 0: libiscsi waits to retry a reconnect; poll it again soon. */
			if (ev == 0) {
				if (wait > 0.1)
					wait = 0.1;
				continue;
			}
			pfd[i].fd = iscsi_get_fd(t->iscsi);
			pfd[i].events = (short)ev;
		}
		int rc = poll(pfd, ntargets, (int)ceil(wait * 1000));
		if (rc < 0 && errno != EINTR) {
			diag("poll: %s", strerror(errno));
			return 3;
		}
		for (int i = 0; i < ntargets; i++) {
			struct target *t = &targets[i];
			if (t->phase == DEAD)
				continue;
			/* Also with no events: libiscsi runs its timers and pending
			 * reconnects from iscsi_service. */
			short revents = pfd[i].fd >= 0 ? pfd[i].revents : 0;
			current = t;
			int s = iscsi_service(t->iscsi, revents);
			current = NULL;
			/* While libiscsi holds a reconnect back (at most one every
			 * 3 s) the old socket keeps reporting the hang-up: poll it
			 * every 10 ms instead of spinning. */
			if (revents & (POLLHUP | POLLERR))
				t->hup_until = mono() + 0.01;
			if (s < 0) {
				diag("%s: session lost: %s", t->label, iscsi_get_error(t->iscsi));
				t->errors += t->inflight;
				set_phase(t, DEAD);
				lost = 1;
			}
		}
		now = mono();
		if (now >= next_report) {
			report(now, interval);
			next_report += interval;
			if (next_report < now)
				next_report = now + interval;
		}
	}

	int bad = 0;
	for (int i = 0; i < ntargets; i++) {
		struct target *t = &targets[i];
		printf("{\"event\":\"final\",\"target\":\"%s\",\"t\":%.3f,\"seconds\":%.3f,", t->label,
		       mono() - t0, mono() - start);
		print_counters(t);
		printf(",\"final_verified\":%" PRIu64 ",\"final_verify_errors\":%" PRIu64 "}\n",
		       t->final_verified, t->final_verify_errors);
		if (t->errors || t->verify_errors)
			bad = 1;
		if (t->phase != DEAD && t->inflight == 0) {
			iscsi_set_timeout(t->iscsi, 3);
			iscsi_logout_sync(t->iscsi);
			iscsi_destroy_context(t->iscsi);
		}
	}
	fflush(stdout);
	if (lost)
		return 3;
	return bad ? 1 : 0;
}
