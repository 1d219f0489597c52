/*
 * pagestore.pg._walcore: the compiled core of the WAL decoder.
 *
 * The pure-Python modules pagestore/pg/xlogrecord.py (decode_record) and
 * pagestore/pg/waldecoder.py (WalStreamDecoder.poll) are the reference; this file does
 * the same work for the common case and nothing else:
 *
 *   decode_record(raw, lsn, end_lsn, check_crc) -> DecodedRecord | None
 *       DecodeXLogRecord (src/backend/access/transam/xlogreader.c) plus the CRC-32C.
 *       Returns None for any record the reference would reject, so the reference is
 *       run on it and raises its own CorruptWalError: there is one wording of every
 *       error, and the compiled path cannot accept what the reference refuses.
 *
 *   scan(buf, off, pos, prev_lsn, max_records) -> (records, off, pos, prev_lsn)
 *       The stream decoder's fast path: the records that lie whole on the current WAL
 *       page and are already buffered, one after another, until a page boundary, a
 *       record that continues on the next page, an XLOG_SWITCH, or anything the
 *       reference must judge (a zero or invalid length, a bad prev-link, a record the
 *       reference rejects).  Page headers and multi-page records stay in Python.
 *
 *   crc32c(data, crc=0) -> int      CRC-32C (Castagnoli), as the crc32c package computes
 *                                   it; SSE4.2 when the CPU has it.
 *
 * configure(DecodedRecord, BlockReference, RelTag, XLogRecordHeader, Lsn) is called once
 * by xlogrecord.py: objects are built as the Python classes' instances by allocating
 * them and filling their slots directly (no Python __init__ per object).
 *
 * Structs mirrored (src/include/access/xlogrecord.h, all little-endian on disk):
 *   XLogRecord { uint32 xl_tot_len; TransactionId xl_xid; XLogRecPtr xl_prev;
 *                uint8 xl_info; RmgrId xl_rmid; 2 bytes padding; pg_crc32c xl_crc; }
 *   XLogRecordBlockHeader { uint8 id; uint8 fork_flags; uint16 data_length; }
 *   XLogRecordBlockImageHeader { uint16 length; uint16 hole_offset; uint8 bimg_info; }
 *   XLogRecordBlockCompressHeader { uint16 hole_length; }
 *   RelFileNode { Oid spcNode; Oid dbNode; Oid relNode; }
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define HAVE_SSE42_INTRINSICS 1
#endif

#define BLCKSZ 8192
#define XLOG_BLCKSZ 8192
#define SIZE_OF_XLOG_RECORD 24
#define XL_CRC_OFFSET 20
#define MAX_RECORD_LENGTH 0x3FFFFFFFu

#define XLR_MAX_BLOCK_ID 32
#define XLR_BLOCK_ID_DATA_SHORT 255
#define XLR_BLOCK_ID_DATA_LONG 254
#define XLR_BLOCK_ID_ORIGIN 253
#define XLR_BLOCK_ID_TOPLEVEL_XID 252

#define BKPBLOCK_FORK_MASK 0x0F
#define BKPBLOCK_HAS_IMAGE 0x10
#define BKPBLOCK_HAS_DATA 0x20
#define BKPBLOCK_SAME_REL 0x80

#define BKPIMAGE_HAS_HOLE 0x01
#define BKPIMAGE_COMPRESSED (0x04 | 0x08 | 0x10)

#define RM_XLOG_ID 0
#define XLOG_SWITCH 0x40
#define XLR_RMGR_INFO_MASK 0xF0

/* ------------------------------------------------------------------ CRC-32C */

static uint32_t crc_table[8][256];
static int have_sse42 = 0;

static void
crc_init_tables(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[t][i] = c;
        }
    }
}

/* Slicing-by-8 over a running (non-inverted) CRC register. */
static uint32_t
crc_update_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
              crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#ifdef HAVE_SSE42_INTRINSICS
__attribute__((target("sse4.2")))
static uint32_t
crc_update_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

static uint32_t
crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
#ifdef HAVE_SSE42_INTRINSICS
    if (have_sse42)
        return crc_update_hw(crc, p, n);
#endif
    return crc_update_sw(crc, p, n);
}

/* ------------------------------------------------------------------ the Python classes */

static PyTypeObject *DecodedRecordType, *BlockReferenceType, *RelTagType, *HeaderType,
    *LsnType;

enum { BR_BLOCK_ID, BR_REL, BR_BLKNO, BR_FORK_FLAGS, BR_BIMG_INFO, BR_HOLE_OFFSET,
       BR_HOLE_LENGTH, BR_IMAGE, BR_DATA, BR_NFIELDS };
static const char *br_names[BR_NFIELDS] = {"block_id", "rel", "blkno", "fork_flags",
    "bimg_info", "hole_offset", "hole_length", "image", "data"};
static PyObject *br_descr[BR_NFIELDS];

enum { RT_SPC, RT_DB, RT_REL, RT_FORK, RT_NFIELDS };
static const char *rt_names[RT_NFIELDS] = {"spcnode", "dbnode", "relnode", "forknum"};
static PyObject *rt_descr[RT_NFIELDS];

enum { DR_LSN, DR_END_LSN, DR_HEADER, DR_BLOCKS, DR_MAIN_DATA, DR_ORIGIN, DR_TOPLEVEL,
       DR_RAW, DR_NFIELDS };
static const char *dr_names[DR_NFIELDS] = {"lsn", "end_lsn", "header", "blocks",
    "main_data", "origin", "toplevel_xid", "raw"};
static PyObject *dr_descr[DR_NFIELDS];

static PyObject *small_ints[256];

static int
fetch_descriptors(PyTypeObject *type, const char **names, PyObject **out, int n)
{
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDict_GetItemString(type->tp_dict, names[i]);
        if (d == NULL || Py_TYPE(d)->tp_descr_set == NULL) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, names[i]);
            return -1;
        }
        Py_INCREF(d);
        Py_XSETREF(out[i], d);
    }
    return 0;
}

static PyObject *
walcore_configure(PyObject *self, PyObject *args)
{
    PyObject *dr, *br, *rt, *hd, *lsn;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!", &PyType_Type, &dr, &PyType_Type, &br,
                          &PyType_Type, &rt, &PyType_Type, &hd, &PyType_Type, &lsn))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)hd, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "the record header type must be a tuple subclass");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)lsn, &PyLong_Type)) {
        PyErr_SetString(PyExc_TypeError, "the LSN type must be an int subclass");
        return NULL;
    }
    if (fetch_descriptors((PyTypeObject *)br, br_names, br_descr, BR_NFIELDS) < 0 ||
        fetch_descriptors((PyTypeObject *)rt, rt_names, rt_descr, RT_NFIELDS) < 0 ||
        fetch_descriptors((PyTypeObject *)dr, dr_names, dr_descr, DR_NFIELDS) < 0)
        return NULL;
    Py_INCREF(dr); Py_XSETREF(DecodedRecordType, (PyTypeObject *)dr);
    Py_INCREF(br); Py_XSETREF(BlockReferenceType, (PyTypeObject *)br);
    Py_INCREF(rt); Py_XSETREF(RelTagType, (PyTypeObject *)rt);
    Py_INCREF(hd); Py_XSETREF(HeaderType, (PyTypeObject *)hd);
    Py_INCREF(lsn); Py_XSETREF(LsnType, (PyTypeObject *)lsn);
    Py_RETURN_NONE;
}

/* Store ``value`` (a new reference, stolen) into slot ``descr`` of ``obj``. */
static int
set_slot(PyObject *obj, PyObject *descr, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = Py_TYPE(descr)->tp_descr_set(descr, obj, value);
    Py_DECREF(value);
    return r;
}

static PyObject *
py_uint(unsigned long long v)
{
    if (v < 256) {
        Py_INCREF(small_ints[v]);
        return small_ints[v];
    }
    return PyLong_FromUnsignedLongLong(v);
}

static PyObject *
new_lsn(unsigned long long v)
{
    PyObject *value = PyLong_FromUnsignedLongLong(v);
    if (value == NULL)
        return NULL;
    PyObject *args = PyTuple_Pack(1, value);
    Py_DECREF(value);
    if (args == NULL)
        return NULL;
    /* int.__new__(Lsn, v): the range check of Lsn.__new__ holds by construction. */
    PyObject *lsn = PyLong_Type.tp_new(LsnType, args, NULL);
    Py_DECREF(args);
    return lsn;
}

static PyObject *
new_reltag(uint32_t spc, uint32_t db, uint32_t rel, unsigned fork)
{
    PyObject *o = RelTagType->tp_alloc(RelTagType, 0);
    if (o == NULL)
        return NULL;
    if (set_slot(o, rt_descr[RT_SPC], py_uint(spc)) < 0 ||
        set_slot(o, rt_descr[RT_DB], py_uint(db)) < 0 ||
        set_slot(o, rt_descr[RT_REL], py_uint(rel)) < 0 ||
        set_slot(o, rt_descr[RT_FORK], py_uint(fork)) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

static inline uint16_t rd16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

typedef struct {
    int block_id;
    uint32_t spc, db, rel;
    unsigned fork;
    uint32_t blkno;
    unsigned fork_flags;
    unsigned data_len;
    unsigned img_len;
    unsigned hole_offset;
    long hole_length;  /* BLCKSZ - img_len may be negative: the reference keeps it so */
    unsigned bimg_info;
} PendingBlock;

/*
 * Decode one reassembled record held in ``raw`` (a bytes object, kept as the record's
 * ``raw``).  Returns a new DecodedRecord, Py_None (new reference) when the reference
 * decoder must judge the record, or NULL with an exception set.
 */
static PyObject *
decode(PyObject *raw, PyObject *lsn, PyObject *end_lsn, int check_crc)
{
    const unsigned char *r = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t end = PyBytes_GET_SIZE(raw);
    PendingBlock blocks[XLR_MAX_BLOCK_ID + 1];
    int nblocks = 0;

    if (end < SIZE_OF_XLOG_RECORD || rd32(r) != (uint64_t)end)
        Py_RETURN_NONE;
    if (check_crc) {
        uint32_t crc = 0xFFFFFFFFu;
        crc = crc_update(crc, r + SIZE_OF_XLOG_RECORD, (size_t)end - SIZE_OF_XLOG_RECORD);
        crc = crc_update(crc, r, XL_CRC_OFFSET);
        if ((crc ^ 0xFFFFFFFFu) != rd32(r + XL_CRC_OFFSET))
            Py_RETURN_NONE;
    }
    Py_ssize_t pos = SIZE_OF_XLOG_RECORD;
    Py_ssize_t datatotal = 0, main_len = 0;
    long origin = -1;
    long long toplevel = -1;
    int have_rel = 0, last_id = -1;
    uint32_t last_spc = 0, last_db = 0, last_rel = 0;

    while (end - pos > datatotal) {
        unsigned block_id = r[pos++];
        if (block_id == XLR_BLOCK_ID_DATA_SHORT) {
            if (pos + 1 > end)
                Py_RETURN_NONE;
            main_len = r[pos++];
            datatotal += main_len;
            break;
        }
        if (block_id == XLR_BLOCK_ID_DATA_LONG) {
            if (pos + 4 > end)
                Py_RETURN_NONE;
            main_len = rd32(r + pos);
            pos += 4;
            datatotal += main_len;
            break;
        }
        if (block_id == XLR_BLOCK_ID_ORIGIN) {
            if (pos + 2 > end)
                Py_RETURN_NONE;
            origin = rd16(r + pos);
            pos += 2;
            continue;
        }
        if (block_id == XLR_BLOCK_ID_TOPLEVEL_XID) {
            if (pos + 4 > end)
                Py_RETURN_NONE;
            toplevel = rd32(r + pos);
            pos += 4;
            continue;
        }
        if (block_id > XLR_MAX_BLOCK_ID || (int)block_id <= last_id)
            Py_RETURN_NONE;
        last_id = (int)block_id;
        if (pos + 3 > end)
            Py_RETURN_NONE;
        PendingBlock *b = &blocks[nblocks];
        b->block_id = (int)block_id;
        b->fork_flags = r[pos];
        b->data_len = rd16(r + pos + 1);
        pos += 3;
        if (((b->fork_flags & BKPBLOCK_HAS_DATA) != 0) != (b->data_len > 0))
            Py_RETURN_NONE;
        datatotal += b->data_len;
        b->img_len = b->hole_offset = b->bimg_info = 0;
        b->hole_length = 0;
        if (b->fork_flags & BKPBLOCK_HAS_IMAGE) {
            if (pos + 5 > end)
                Py_RETURN_NONE;
            b->img_len = rd16(r + pos);
            b->hole_offset = rd16(r + pos + 2);
            b->bimg_info = r[pos + 4];
            pos += 5;
            int compressed = (b->bimg_info & BKPIMAGE_COMPRESSED) != 0;
            int has_hole = (b->bimg_info & BKPIMAGE_HAS_HOLE) != 0;
            if (compressed && has_hole) {
                if (pos + 2 > end)
                    Py_RETURN_NONE;
                b->hole_length = rd16(r + pos);
                pos += 2;
            } else if (!compressed) {
                b->hole_length = (long)BLCKSZ - (long)b->img_len;
            }
            datatotal += b->img_len;
            if (has_hole && (b->hole_offset == 0 || b->hole_length == 0 || b->img_len == BLCKSZ))
                Py_RETURN_NONE;
            if (!has_hole && (b->hole_offset != 0 || b->hole_length != 0))
                Py_RETURN_NONE;
            if (compressed && b->img_len == BLCKSZ)
                Py_RETURN_NONE;
            if (!has_hole && !compressed && b->img_len != BLCKSZ)
                Py_RETURN_NONE;
        }
        if (b->fork_flags & BKPBLOCK_SAME_REL) {
            if (!have_rel)
                Py_RETURN_NONE;
        } else {
            if (pos + 12 > end)
                Py_RETURN_NONE;
            last_spc = rd32(r + pos);
            last_db = rd32(r + pos + 4);
            last_rel = rd32(r + pos + 8);
            pos += 12;
            have_rel = 1;
        }
        b->spc = last_spc;
        b->db = last_db;
        b->rel = last_rel;
        b->fork = b->fork_flags & BKPBLOCK_FORK_MASK;
        if (pos + 4 > end)
            Py_RETURN_NONE;
        b->blkno = rd32(r + pos);
        pos += 4;
        nblocks++;
    }
    if (end - pos != datatotal)
        Py_RETURN_NONE;

    /* Valid: build the objects. */
    PyObject *rec = NULL, *hdr = NULL, *tuple = NULL, *prev_rel = NULL;
    hdr = HeaderType->tp_alloc(HeaderType, 6);
    if (hdr == NULL)
        goto fail;
    {
        PyObject *items[6] = {
            PyLong_FromUnsignedLong(rd32(r)), PyLong_FromUnsignedLong(rd32(r + 4)),
            PyLong_FromUnsignedLongLong(rd64(r + 8)), py_uint(r[16]), py_uint(r[17]),
            PyLong_FromUnsignedLong(rd32(r + XL_CRC_OFFSET))};
        int bad = 0;
        for (int i = 0; i < 6; i++) {
            if (items[i] == NULL)
                bad = 1;
            PyTuple_SET_ITEM(hdr, i, items[i] ? items[i] : Py_NewRef(Py_None));
        }
        if (bad)
            goto fail;
    }
    tuple = PyTuple_New(nblocks);
    if (tuple == NULL)
        goto fail;
    for (int i = 0; i < nblocks; i++) {
        PendingBlock *b = &blocks[i];
        PyObject *relobj;
        if (prev_rel != NULL && i > 0 && blocks[i - 1].spc == b->spc &&
            blocks[i - 1].db == b->db && blocks[i - 1].rel == b->rel &&
            blocks[i - 1].fork == b->fork) {
            relobj = Py_NewRef(prev_rel);  /* RelTag is immutable: share it */
        } else {
            relobj = new_reltag(b->spc, b->db, b->rel, b->fork);
            if (relobj == NULL)
                goto fail;
        }
        Py_XSETREF(prev_rel, Py_NewRef(relobj));
        PyObject *br = BlockReferenceType->tp_alloc(BlockReferenceType, 0);
        if (br == NULL) {
            Py_DECREF(relobj);
            goto fail;
        }
        PyTuple_SET_ITEM(tuple, i, br);
        if (set_slot(br, br_descr[BR_BLOCK_ID], py_uint((unsigned)b->block_id)) < 0 ||
            set_slot(br, br_descr[BR_REL], relobj) < 0 ||
            set_slot(br, br_descr[BR_BLKNO], PyLong_FromUnsignedLong(b->blkno)) < 0 ||
            set_slot(br, br_descr[BR_FORK_FLAGS], py_uint(b->fork_flags)) < 0 ||
            set_slot(br, br_descr[BR_BIMG_INFO], py_uint(b->bimg_info)) < 0 ||
            set_slot(br, br_descr[BR_HOLE_OFFSET], py_uint(b->hole_offset)) < 0 ||
            set_slot(br, br_descr[BR_HOLE_LENGTH], PyLong_FromLong(b->hole_length)) < 0 ||
            set_slot(br, br_descr[BR_IMAGE],
                     PyBytes_FromStringAndSize((const char *)r + pos, b->img_len)) < 0)
            goto fail;
        pos += b->img_len;
        if (set_slot(br, br_descr[BR_DATA],
                     PyBytes_FromStringAndSize((const char *)r + pos, b->data_len)) < 0)
            goto fail;
        pos += b->data_len;
    }
    Py_CLEAR(prev_rel);
    rec = DecodedRecordType->tp_alloc(DecodedRecordType, 0);
    if (rec == NULL)
        goto fail;
    PyObject *main_data = PyBytes_FromStringAndSize((const char *)r + pos, main_len);
    if (main_data == NULL)
        goto fail;
    /* set_slot consumes the value it is given, failing or not */
    int bad = set_slot(rec, dr_descr[DR_HEADER], hdr) < 0;
    hdr = NULL;
    bad |= set_slot(rec, dr_descr[DR_BLOCKS], tuple) < 0;
    tuple = NULL;
    bad |= set_slot(rec, dr_descr[DR_MAIN_DATA], main_data) < 0;
    if (bad ||
        set_slot(rec, dr_descr[DR_LSN], Py_NewRef(lsn)) < 0 ||
        set_slot(rec, dr_descr[DR_END_LSN], Py_NewRef(end_lsn)) < 0 ||
        set_slot(rec, dr_descr[DR_ORIGIN],
                 origin < 0 ? Py_NewRef(Py_None) : py_uint((unsigned long long)origin)) < 0 ||
        set_slot(rec, dr_descr[DR_TOPLEVEL],
                 toplevel < 0 ? Py_NewRef(Py_None)
                              : PyLong_FromUnsignedLongLong((unsigned long long)toplevel)) < 0 ||
        set_slot(rec, dr_descr[DR_RAW], Py_NewRef(raw)) < 0)
        goto fail;
    return rec;

fail:
    Py_XDECREF(rec);
    Py_XDECREF(hdr);
    Py_XDECREF(tuple);
    Py_XDECREF(prev_rel);
    return NULL;
}

static int
check_configured(void)
{
    if (DecodedRecordType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pagestore.pg._walcore.configure() was not called");
        return -1;
    }
    return 0;
}

static PyObject *
walcore_decode_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_record(raw, lsn, end_lsn, check_crc)");
        return NULL;
    }
    if (check_configured() < 0)
        return NULL;
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "decode_record: raw must be bytes");
        return NULL;
    }
    int check = PyObject_IsTrue(args[3]);
    if (check < 0)
        return NULL;
    return decode(args[0], args[1], args[2], check);
}

/*
 * scan(buf, off, pos, prev_lsn, max_records): see the header comment.  ``prev_lsn`` is
 * -1 when the decoder has no previous record to check xl_prev against.
 */
static PyObject *
walcore_scan(PyObject *self, PyObject *args)
{
    PyObject *bufobj;
    Py_ssize_t off, max_records;
    unsigned long long pos;
    long long prev;
    if (!PyArg_ParseTuple(args, "OnKLn", &bufobj, &off, &pos, &prev, &max_records))
        return NULL;
    if (check_configured() < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *records = PyList_New(0);
    if (records == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t len = view.len;
    if (off < 0 || off > len) {
        PyErr_SetString(PyExc_ValueError, "scan: offset outside the buffer");
        goto fail;
    }
    while (PyList_GET_SIZE(records) < max_records) {
        unsigned long long page_off = pos % XLOG_BLCKSZ;
        if (page_off == 0)
            break;                     /* a page header: the Python decoder reads it */
        unsigned long long aligned = (pos + 7) & ~7ULL;
        if (aligned != pos) {
            if ((unsigned long long)(len - off) < aligned - pos)
                break;
            off += (Py_ssize_t)(aligned - pos);
            pos = aligned;
            continue;
        }
        Py_ssize_t avail = len - off;
        if (avail < 4)
            break;
        uint32_t tot_len = rd32(buf + off);
        if (tot_len < SIZE_OF_XLOG_RECORD || tot_len > MAX_RECORD_LENGTH)
            break;                     /* end of WAL or corrupt: the reference says which */
        if (tot_len > XLOG_BLCKSZ - page_off || (Py_ssize_t)tot_len > avail)
            break;                     /* continues on the next page, or not all here */
        const unsigned char *r = buf + off;
        if (prev >= 0 && rd64(r + 8) != (unsigned long long)prev)
            break;
        if (r[17] == RM_XLOG_ID && (r[16] & XLR_RMGR_INFO_MASK) == XLOG_SWITCH)
            break;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)r, tot_len);
        if (raw == NULL)
            goto fail;
        unsigned long long end_pos = (pos + tot_len + 7) & ~7ULL;
        PyObject *lsn = new_lsn(pos);
        PyObject *end_lsn = lsn ? new_lsn(end_pos) : NULL;
        PyObject *rec = end_lsn ? decode(raw, lsn, end_lsn, 1) : NULL;
        Py_DECREF(raw);
        Py_XDECREF(lsn);
        Py_XDECREF(end_lsn);
        if (rec == NULL)
            goto fail;
        if (rec == Py_None) {
            Py_DECREF(rec);
            break;
        }
        int r2 = PyList_Append(records, rec);
        Py_DECREF(rec);
        if (r2 < 0)
            goto fail;
        prev = (long long)pos;
        pos += tot_len;
        off += tot_len;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(NnKL)", records, off, pos, prev);

fail:
    PyBuffer_Release(&view);
    Py_DECREF(records);
    return NULL;
}

static PyObject *
walcore_crc32c(PyObject *self, PyObject *args)
{
    Py_buffer view;
    unsigned long crc = 0;
    if (!PyArg_ParseTuple(args, "y*|k", &view, &crc))
        return NULL;
    uint32_t c = crc_update((uint32_t)crc ^ 0xFFFFFFFFu, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(c ^ 0xFFFFFFFFu);
}

static PyMethodDef walcore_methods[] = {
    {"configure", walcore_configure, METH_VARARGS,
     "configure(DecodedRecord, BlockReference, RelTag, XLogRecordHeader, Lsn)"},
    {"decode_record", (PyCFunction)(void (*)(void))walcore_decode_record, METH_FASTCALL,
     "decode_record(raw, lsn, end_lsn, check_crc) -> DecodedRecord, or None if the "
     "reference decoder must judge the record"},
    {"scan", walcore_scan, METH_VARARGS,
     "scan(buf, off, pos, prev_lsn, max_records) -> (records, off, pos, prev_lsn)"},
    {"crc32c", walcore_crc32c, METH_VARARGS, "crc32c(data, crc=0) -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef walcore_module = {
    PyModuleDef_HEAD_INIT, "pagestore.pg._walcore",
    "The compiled core of pagestore's WAL decoder (see _walcore.c).", -1, walcore_methods,
};

PyMODINIT_FUNC
PyInit__walcore(void)
{
    crc_init_tables();
#ifdef HAVE_SSE42_INTRINSICS
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2") != 0;
#endif
    for (int i = 0; i < 256; i++) {
        small_ints[i] = PyLong_FromLong(i);
        if (small_ints[i] == NULL)
            return NULL;
    }
    PyObject *m = PyModule_Create(&walcore_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "HAVE_SSE42", have_sse42) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
