/*
 * The process bench/memory_scan.py scans: a heap of about MIB MiB shaped like a game's, and a player reached
 * the way a real game's is, through a static global and two heap objects:
 *
 *     base(scan_target) + offset(g_world) -> struct world *
 *                       + offsetof(struct world, player) -> struct player *
 *                       + offsetof(struct player, x) -> the f32 x
 *
 * The heap is many allocations of the kinds a game holds, interleaved as a level load allocates them
 * (plan[] gives each kind's share of the bytes and its sizes): small objects (entities and components: a
 * vtable pointer into read-only data, pointers to other objects, floats, small ints), pointer arrays (entity
 * lists), float arrays (vertices, curves), int arrays (indices, tile maps), strings, RGBA textures, int16
 * audio, and pools that are mostly zero. Allocations over 128 KiB get their own mappings, as glibc gives
 * them. The content comes from a seeded xorshift: a size and a seed always give the same content (not the
 * same addresses: ASLR).
 *
 * It prints one line, `ready pid=... module=scan_target world=0x.. world.player=0x.. player.x=0x..
 * x_address=0x.. x=... score_address=0x.. score=... heap_bytes=... allocations=...`, then reads commands
 * from stdin: `x VALUE` sets the player's x and runs one frame (MOVERS floats in other entities move by up to
 * 3 either way, as a game's other objects do) and answers `ok`; `quit` or the end of stdin ends it.
 *
 * Build: gcc -O2 -o scan_target memory_scan_target.c -lm ; run: scan_target MIB SEED [STATIC_TABLE_ENTRIES]
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum kind { SMALL, POINTERS, FLOATS, INTS, TEXT, TEXTURE, AUDIO, POOL, FIXED };
#define PLANNED FIXED

/* Each kind's share of the heap's bytes (percent) and its allocation sizes in bytes. */
static const struct {
    double percent;
    size_t min, max;
} plan[PLANNED] = {
    [SMALL] = {30, 32, 512},             /* entities, components: sizes skewed towards the small end */
    [POINTERS] = {4, 256, 64 << 10},     /* entity lists, children, render queues */
    [FLOATS] = {20, 4 << 10, 256 << 10}, /* vertices, animation curves */
    [INTS] = {8, 1 << 10, 128 << 10},    /* index buffers, tile maps */
    [TEXT] = {3, 16, 256},               /* names, strings */
    [TEXTURE] = {25, 64 << 10, 4 << 20}, /* RGBA8 pixels */
    [AUDIO] = {5, 64 << 10, 1 << 20},    /* int16 samples */
    [POOL] = {5, 16 << 10, 1 << 20},     /* preallocated pools: a used head, zeros after */
};

#define MOVERS 4096
#define ENTITY_LIST 1024
#define TABLE_SIZE MOVERS

/* What the small objects' first word points to: their "vtables", in read-only data (not in the pointer map). */
static const uint64_t vtables[16][8] = {{1, 2, 3, 4, 5, 6, 7, 8}};
static const char *const words[] = {"player", "enemy",  "coin",  "block", "sprite", "level", "music",
                                    "jump",   "shadow", "water", "fire",  "boss",   "menu",  "font"};

struct player {
    const void *vtable;
    uint32_t id, flags;
    void *sprite, *body, *inventory;
    float y, z;
    float velocity[3];
    int32_t hp, score;
    float jump_timer;
    char name[32];
    float x; /* what the benchmark scans for */
    float best_x;
    void *weapon;
    uint64_t spare[8];
};

struct world {
    const void *vtable;
    uint64_t frame;
    void *level, *camera, *entities;
    float gravity, time;
    void *physics, *audio;
    struct player *player;
    uint64_t spare[16];
};

struct allocation {
    unsigned char *data;
    size_t size;
    enum kind kind;
};

/* The globals a pointer chain can start from; the objects themselves are on the heap. */
static struct world *g_world;
static void **g_entities;
static struct allocation *g_allocations;
static size_t g_allocation_count;
static float **g_movers; /* the benchmark's own bookkeeping: on the heap, so that it adds no static pointers */
/* With a third argument N, the first N entries point to the entities that move (those holding the movers), as
 * a C game's static table of active entities does (gcc places it below g_world in .bss). Without, all zeros. */
void *g_table[TABLE_SIZE]; /* not static: gcc would drop a table nothing in this file reads */

extern char __executable_start[];

static uint64_t rng_state;

static uint64_t next_random(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static double uniform(void) { return (double)(next_random() >> 11) * 0x1.0p-53; }

static float between(float low, float high) { return low + (high - low) * (float)uniform(); }

static size_t pick_size(enum kind kind) {
    double low = (double)plan[kind].min, high = (double)plan[kind].max, u = uniform();
    /* Small objects: most are small (u cubed); the rest: spread evenly over the sizes' orders of magnitude. */
    double size = kind == SMALL ? low + (high - low) * u * u * u : low * pow(high / low, u);
    return ((size_t)size + 15) & ~(size_t)15;
}

static double mean_size(enum kind kind) {
    double low = (double)plan[kind].min, high = (double)plan[kind].max;
    return kind == SMALL ? low + (high - low) / 4 : (high - low) / log(high / low);
}

static void remember(unsigned char *data, size_t size, enum kind kind) {
    static size_t capacity;
    if (g_allocation_count == capacity) {
        capacity = capacity ? 2 * capacity : 4096;
        g_allocations = realloc(g_allocations, capacity * sizeof *g_allocations);
        if (!g_allocations) abort();
    }
    g_allocations[g_allocation_count++] = (struct allocation){data, size, kind};
}

static void *allocate(size_t size, enum kind kind) {
    unsigned char *data = malloc(size);
    if (!data) {
        fprintf(stderr, "scan_target: out of memory\n");
        exit(1);
    }
    remember(data, size, kind);
    return data;
}

static const struct allocation *random_allocation(void) {
    return &g_allocations[next_random() % g_allocation_count];
}

/* A pointer as game objects hold them: mostly to another small object's start, sometimes to a member or a buffer. */
static uint64_t random_pointer(void) {
    const struct allocation *target = random_allocation();
    for (int tries = 0; tries < 4 && target->kind != SMALL && uniform() < 0.8; tries++) target = random_allocation();
    size_t offset = uniform() < 0.1 ? (next_random() % (target->size / 8)) * 8 : 0;
    return (uint64_t)(uintptr_t)(target->data + offset);
}

static uint64_t two_floats(float a, float b) {
    uint32_t bits[2];
    memcpy(&bits[0], &a, 4);
    memcpy(&bits[1], &b, 4);
    return (uint64_t)bits[1] << 32 | bits[0];
}

static uint32_t small_int(void) {
    double u = uniform();
    return u < 0.6 ? (uint32_t)(next_random() % 16) : u < 0.9 ? (uint32_t)(next_random() % 1000) : (uint32_t)(next_random() % 100000);
}

static void fill_small(uint64_t *slots, size_t count) {
    slots[0] = (uint64_t)(uintptr_t)vtables[next_random() % 16];
    slots[1] = (uint64_t)(next_random() % 1000000) << 32 | (next_random() % 64);
    for (size_t i = 2; i < count; i++) {
        double u = uniform();
        if (u < 0.25)
            slots[i] = random_pointer();
        else if (u < 0.40)
            slots[i] = two_floats(between(-1000, 1000), between(-1000, 1000)); /* a position */
        else if (u < 0.50)
            slots[i] = two_floats(between(-10, 10), between(-10, 10)); /* a velocity */
        else if (u < 0.55)
            slots[i] = two_floats(between(0, 1), between(0, 6.2832f)); /* a ratio, an angle */
        else if (u < 0.75)
            slots[i] = (uint64_t)small_int() << 32 | small_int();
        else if (u < 0.90)
            slots[i] = 0;
        else if (u < 0.95) /* a name: a string literal in read-only data */
            slots[i] = (uint64_t)(uintptr_t)words[next_random() % (sizeof words / sizeof *words)];
        else
            slots[i] = next_random(); /* hashes, bit sets */
    }
}

static void fill(const struct allocation *a) {
    unsigned char *data = a->data;
    size_t size = a->size;
    switch (a->kind) {
        case SMALL:
            fill_small((uint64_t *)data, size / 8);
            break;
        case POINTERS: { /* a vector of pointers: used up to its size, capacity zeroed */
            uint64_t *slots = (uint64_t *)data;
            size_t count = size / 8, used = (size_t)((double)count * between(0.5f, 1.0f));
            for (size_t i = 0; i < count; i++) slots[i] = i < used ? random_pointer() : 0;
            break;
        }
        case FLOATS: {
            float *values = (float *)data;
            size_t count = size / 4;
            if (next_random() % 2) { /* vertices: position, normal, uv */
                float scale = between(1, 1000);
                for (size_t i = 0; i < count; i++) {
                    size_t field = i % 8;
                    values[i] = field < 3 ? between(-scale, scale) : field < 6 ? between(-1, 1) : between(0, 1);
                }
            } else { /* a curve: (time, value) keys */
                float value = between(-100, 100);
                for (size_t i = 0; i < count; i++) {
                    if (i % 2 == 0)
                        values[i] = (float)(i / 2) / 30.0f;
                    else
                        values[i] = value += between(-1, 1);
                }
            }
            break;
        }
        case INTS: {
            uint32_t *values = (uint32_t *)data;
            size_t count = size / 4;
            uint32_t range = next_random() % 2 ? 65536 : 256; /* indices, tile ids */
            for (size_t i = 0; i < count; i++) values[i] = (uint32_t)(next_random() % range);
            break;
        }
        case TEXT: {
            size_t used = 0;
            while (used + 16 < size) {
                const char *word = words[next_random() % (sizeof words / sizeof *words)];
                size_t length = strlen(word);
                memcpy(data + used, word, length);
                data[used + length] = '_';
                used += length + 1;
            }
            memset(data + used, 0, size - used);
            break;
        }
        case TEXTURE: { /* smooth colour with some noise, mostly opaque */
            uint32_t *pixels = (uint32_t *)data;
            size_t count = size / 4, width = 256;
            uint32_t base = (uint32_t)next_random();
            for (size_t i = 0; i < count; i++) {
                uint32_t noise = (uint32_t)(i * 2654435761u) >> 27;
                uint32_t r = ((base & 0xff) + (i % width) / 2 + noise) & 0xff;
                uint32_t g = ((base >> 8 & 0xff) + (i / width) / 2 + noise) & 0xff;
                uint32_t b = ((base >> 16 & 0xff) + noise * 3) & 0xff;
                uint32_t alpha = (i % 97) < 90 ? 0xff : (uint32_t)(i % 256);
                pixels[i] = alpha << 24 | b << 16 | g << 8 | r;
            }
            break;
        }
        case AUDIO: {
            int16_t *samples = (int16_t *)data;
            size_t count = size / 2;
            float step = between(0.01f, 0.2f);
            for (size_t i = 0; i < count; i++)
                samples[i] = (int16_t)(8000.0f * sinf(step * (float)i) + between(-500, 500));
            break;
        }
        case POOL: { /* a head of live objects, the rest unused */
            size_t used = (size_t)((double)size * between(0.0f, 0.2f)) & ~(size_t)7;
            fill_small((uint64_t *)data, used / 8 > 2 ? used / 8 : 2);
            if (used < 16) used = 16;
            memset(data + used, 0, size - used);
            break;
        }
        case FIXED:
            break;
    }
}

static void frame(void) {
    g_world->frame++;
    g_world->time += 1.0f / 60;
    for (int i = 0; i < MOVERS; i++) *g_movers[i] += between(-3, 3);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: scan_target MIB SEED [STATIC_TABLE_ENTRIES]\n");
        return 2;
    }
    int table_entries = argc == 4 ? atoi(argv[3]) : 0;
    if (table_entries < 0 || table_entries > TABLE_SIZE) {
        fprintf(stderr, "scan_target: the static table holds 0 to %d entries\n", TABLE_SIZE);
        return 2;
    }
    size_t budget = (size_t)atol(argv[1]) << 20;
    rng_state = (uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ULL + 1;
    /* A fixed threshold: glibc would otherwise raise it as buffers are freed (the realloc above), and large
     * buffers would move from their own mappings into the heap depending on the order of things. */
    mallopt(M_MMAP_THRESHOLD, 128 << 10);

    /* Kinds are drawn by count so that each one's expected share of the bytes is its plan[].percent. */
    double weights[PLANNED], total_weight = 0;
    for (int k = 0; k < PLANNED; k++) total_weight += weights[k] = plan[k].percent / mean_size(k);
    size_t allocated = 0;
    while (allocated < budget) {
        if (!g_world && allocated >= budget / 2) { /* the world and player are allocated mid-load */
            g_world = allocate(sizeof *g_world, FIXED);
            g_world->player = allocate(sizeof *g_world->player, FIXED);
            g_entities = allocate(ENTITY_LIST * sizeof *g_entities, FIXED);
            allocated += sizeof *g_world + sizeof *g_world->player + ENTITY_LIST * sizeof *g_entities;
        }
        double pick = uniform() * total_weight;
        int kind = 0;
        while (kind < PLANNED - 1 && (pick -= weights[kind]) > 0) kind++;
        size_t size = pick_size(kind);
        allocate(size, kind);
        allocated += size;
    }
    if (!g_world) {
        fprintf(stderr, "scan_target: the size is too small\n");
        return 2;
    }
    for (size_t i = 0; i < g_allocation_count; i++) fill(&g_allocations[i]);

    struct world *world = g_world;
    struct player *p = world->player;
    fill_small((uint64_t *)world, sizeof *world / 8);
    fill_small((uint64_t *)p, sizeof *p / 8);
    world->vtable = vtables[1];
    world->gravity = 9.81f;
    world->time = 0;
    world->player = p;
    world->entities = g_entities;
    p->vtable = vtables[2];
    p->hp = 100;
    p->score = 1250;
    p->x = 250.0f;
    p->best_x = 250.0f;
    snprintf(p->name, sizeof p->name, "player one");
    /* The player is also in the entity list, as in a real game, further in than a pointer scan's default reach. */
    for (int i = 0; i < ENTITY_LIST; i++) g_entities[i] = (void *)(uintptr_t)random_pointer();
    g_entities[600 + next_random() % 400] = p;
    g_movers = malloc(MOVERS * sizeof *g_movers);
    for (int i = 0; i < MOVERS; i++) {
        const struct allocation *a;
        do a = random_allocation();
        while (a->kind != SMALL);
        float *slot = (float *)(a->data + (2 + next_random() % (a->size / 8 - 2)) * 8);
        *slot = between(-1000, 1000);
        g_movers[i] = slot;
        if (i < table_entries) g_table[i] = a->data;
    }

    printf("ready pid=%ld module=scan_target world=0x%lx world.player=0x%zx player.x=0x%zx x_address=0x%lx x=%g "
           "score_address=0x%lx score=%d heap_bytes=%zu allocations=%zu\n",
           (long)getpid(), (unsigned long)((char *)&g_world - __executable_start), offsetof(struct world, player),
           offsetof(struct player, x), (unsigned long)(uintptr_t)&p->x, p->x, (unsigned long)(uintptr_t)&p->score,
           p->score, allocated, g_allocation_count);
    fflush(stdout);

    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        float x;
        if (sscanf(line, "x %f", &x) == 1) {
            p->x = x;
            if (x > p->best_x) p->best_x = x;
            frame();
            printf("ok\n");
            fflush(stdout);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            fprintf(stderr, "scan_target: unknown command %s", line);
        }
    }
    return 0;
}
