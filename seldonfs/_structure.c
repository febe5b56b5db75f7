/* The structure checks of validation.py (is this JSON, is this CSV), in C,
 * fed a file in chunks.
 *
 * new(kind, field_limit) -> a checker; kind "json" or "csv".
 * feed(checker, data) -> None, or the first problem (a one-line str).
 * end(checker) -> None, or the problem the end of the file shows.
 *
 * They accept exactly what validation.py's Python checks accept
 * (tests/test_structure.py compares the two on generated data), except that
 * JSON nested deeper than MAX_DEPTH is refused with its own message and an
 * integer of more than 4,300 digits is taken (Python's int() refuses it):
 *
 * - JSON: json.loads of the UTF-8 bytes, decoded with "surrogatepass" as
 *   json.loads does: RFC 8259 plus NaN, Infinity and -Infinity, control
 *   characters refused in strings. The caller strips a UTF-8 byte-order
 *   mark and sends UTF-16 and UTF-32 files to json.loads.
 * - CSV: csv.reader's default dialect over the text decoded as strict
 *   UTF-8, lines split at "\n" (io.StringIO); the problem is a field over
 *   `field_limit` characters, a line break inside an unquoted field, or
 *   rows of different widths (empty rows aside).
 *
 * Unlike json.loads they build nothing: memory stays at the checker's
 * kilobyte whatever the file, and no nesting recurses. The GIL is let
 * go for chunks of 64 KiB and more (large files are checked in a thread).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 1000
#define NOGIL_BYTES (64 << 10)

typedef const unsigned char *bytes_t;

/* Bytes that go on a JSON string as they are (ASCII, not a control, quote or
 * backslash), and bytes that go on an unquoted CSV field (ASCII, not a comma
 * or line break): the loops over them are most of the time. */
static unsigned char json_plain[256], csv_plain[256];

static void tables(void)
{
    for (int c = 0; c < 0x80; c++) {
        json_plain[c] = c >= 0x20 && c != '"' && c != '\\';
        csv_plain[c] = c != ',' && c != '\n' && c != '\r';
    }
}

/* ---- UTF-8: the range of the second byte after each lead byte. */

static int utf8_lead(unsigned char c, int surrogates, int *need, unsigned char *lo, unsigned char *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        *need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        *need = 2;
        if (c == 0xE0)
            *lo = 0xA0;
        else if (c == 0xED && !surrogates)
            *hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        *need = 3;
        if (c == 0xF0)
            *lo = 0x90;
        else if (c == 0xF4)
            *hi = 0x8F;
    } else
        return 0;
    return 1;
}

/* ---- JSON */

enum {
    J_VALUE, J_ARR_FIRST, J_OBJ_FIRST, J_OBJ_KEY, J_COLON, J_AFTER, J_END,
    J_STRING, J_ESC, J_HEX, J_UTF8,
    J_MINUS, J_ZERO, J_INT, J_DOT, J_FRAC, J_E, J_ESIGN, J_EXP,
    J_LITERAL, J_ERROR,
};

typedef struct {
    int state;
    int in_key;      /* the string being read is an object's key */
    int depth;
    char stack[MAX_DEPTH]; /* '{' or '[' */
    const char *literal; /* the rest of true, false, null, NaN, Infinity */
    int hex_left;
    int u8_need;
    unsigned char u8_lo, u8_hi;
    long long pos, line, line_start;
    char problem[160];
} json_t;

static void json_fail(json_t *j, const char *what)
{
    snprintf(j->problem, sizeof j->problem, "%s: line %lld column %lld (byte %lld)",
             what, j->line, j->pos - j->line_start + 1, j->pos);
    j->state = J_ERROR;
}

static void json_value_done(json_t *j)
{
    j->state = j->depth ? J_AFTER : J_END;
}

static int is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_hex(unsigned char c) { return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f'); }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* The start of a value at byte c (not whitespace). */
static void json_value(json_t *j, unsigned char c)
{
    switch (c) {
    case '{':
    case '[':
        if (j->depth == MAX_DEPTH) {
            json_fail(j, "nested deeper than " Py_STRINGIFY(MAX_DEPTH) " levels");
            return;
        }
        j->stack[j->depth++] = (char)c;
        j->state = c == '{' ? J_OBJ_FIRST : J_ARR_FIRST;
        return;
    case '"':
        j->in_key = 0;
        j->state = J_STRING;
        return;
    case '-':
        j->state = J_MINUS;
        return;
    case '0':
        j->state = J_ZERO;
        return;
    case 't': j->literal = "rue"; break;
    case 'f': j->literal = "alse"; break;
    case 'n': j->literal = "ull"; break;
    case 'N': j->literal = "aN"; break;
    case 'I': j->literal = "nfinity"; break;
    default:
        if (c >= '1' && c <= '9')
            j->state = J_INT;
        else
            json_fail(j, "Expecting value");
        return;
    }
    j->state = J_LITERAL;
}

static void json_close(json_t *j, unsigned char c)
{
    char open = c == '}' ? '{' : '[';
    if (j->depth == 0 || j->stack[j->depth - 1] != open) {
        json_fail(j, "Expecting ',' delimiter");
        return;
    }
    j->depth--;
    json_value_done(j);
}

static void json_feed(json_t *j, bytes_t d, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    long long base = j->pos;
    while (i < n && j->state != J_ERROR) {
        unsigned char c = d[i];
        j->pos = base + i;
        switch (j->state) {
        case J_STRING:
            /* the common case first: plain ASCII up to the next quote, backslash or control */
            while (i < n && json_plain[d[i]])
                i++;
            if (i == n)
                continue;
            c = d[i];
            j->pos = base + i;
            if (c == '"') {
                if (j->in_key)
                    j->state = J_COLON;
                else
                    json_value_done(j);
            } else if (c == '\\')
                j->state = J_ESC;
            else if (c < 0x20)
                json_fail(j, "Invalid control character at");
            else if (!utf8_lead(c, 1, &j->u8_need, &j->u8_lo, &j->u8_hi))
                json_fail(j, "not UTF-8");
            else
                j->state = J_UTF8;
            break;
        case J_UTF8:
            if (c < j->u8_lo || c > j->u8_hi) {
                json_fail(j, "not UTF-8");
                break;
            }
            j->u8_lo = 0x80;
            j->u8_hi = 0xBF;
            if (--j->u8_need == 0)
                j->state = J_STRING;
            break;
        case J_ESC:
            if (c == 'u') {
                j->hex_left = 4;
                j->state = J_HEX;
            } else if (strchr("\"\\/bfnrt", c) && c)
                j->state = J_STRING;
            else
                json_fail(j, "Invalid \\escape");
            break;
        case J_HEX:
            if (!is_hex(c))
                json_fail(j, "Invalid \\uXXXX escape");
            else if (--j->hex_left == 0)
                j->state = J_STRING;
            break;
        case J_MINUS:
            if (c == '0')
                j->state = J_ZERO;
            else if (c >= '1' && c <= '9')
                j->state = J_INT;
            else if (c == 'I') {
                j->literal = "nfinity";
                j->state = J_LITERAL;
            } else
                json_fail(j, "Expecting value");
            break;
        case J_INT:
        case J_FRAC:
            while (i < n && is_digit(d[i]))
                i++;
            if (i == n)
                continue;
            c = d[i];
            j->pos = base + i;
            if (c == '.' && j->state == J_FRAC) {
                json_value_done(j);
                continue; /* a second point: the next token's, and wrong there */
            }
            /* fall through */
        case J_ZERO:
            if (c == '.')
                j->state = J_DOT;
            else if (c == 'e' || c == 'E')
                j->state = J_E;
            else {
                json_value_done(j);
                continue; /* c is the next token's */
            }
            break;
        case J_DOT:
            if (is_digit(c))
                j->state = J_FRAC;
            else
                json_fail(j, "Extra data");
            break;
        case J_E:
            if (c == '+' || c == '-')
                j->state = J_ESIGN;
            else if (is_digit(c))
                j->state = J_EXP;
            else
                json_fail(j, "Extra data");
            break;
        case J_ESIGN:
            if (is_digit(c))
                j->state = J_EXP;
            else
                json_fail(j, "Extra data");
            break;
        case J_EXP:
            if (is_digit(c))
                break;
            json_value_done(j);
            continue;
        case J_LITERAL:
            if ((unsigned char)*j->literal != c) {
                json_fail(j, "Expecting value");
                break;
            }
            if (*++j->literal == '\0')
                json_value_done(j);
            break;
        default:
            /* between tokens */
            if (is_ws(c)) {
                if (c == '\n') {
                    j->line++;
                    j->line_start = base + i + 1;
                }
                break;
            }
            switch (j->state) {
            case J_VALUE:
                json_value(j, c);
                break;
            case J_ARR_FIRST:
                if (c == ']')
                    json_close(j, c);
                else
                    json_value(j, c);
                break;
            case J_OBJ_FIRST:
            case J_OBJ_KEY:
                if (c == '"') {
                    j->in_key = 1;
                    j->state = J_STRING;
                } else if (c == '}' && j->state == J_OBJ_FIRST)
                    json_close(j, c);
                else
                    json_fail(j, "Expecting property name enclosed in double quotes");
                break;
            case J_COLON:
                if (c == ':')
                    j->state = J_VALUE;
                else
                    json_fail(j, "Expecting ':' delimiter");
                break;
            case J_AFTER:
                if (c == ',')
                    j->state = j->stack[j->depth - 1] == '{' ? J_OBJ_KEY : J_VALUE;
                else if (c == '}' || c == ']')
                    json_close(j, c);
                else
                    json_fail(j, "Expecting ',' delimiter");
                break;
            case J_END:
                json_fail(j, "Extra data");
                break;
            }
            break;
        }
        i++;
    }
    if (j->state != J_ERROR)
        j->pos = base + n;
}

static void json_end(json_t *j)
{
    switch (j->state) {
    case J_ERROR:
    case J_END:
        return;
    case J_ZERO:
    case J_INT:
    case J_FRAC:
    case J_EXP:
        if (j->depth == 0)
            return; /* a number alone */
        json_fail(j, "Expecting ',' delimiter");
        return;
    case J_STRING:
    case J_ESC:
    case J_HEX:
    case J_UTF8:
        json_fail(j, "Unterminated string starting at");
        return;
    case J_COLON:
        json_fail(j, "Expecting ':' delimiter");
        return;
    case J_OBJ_FIRST:
    case J_OBJ_KEY:
        json_fail(j, "Expecting property name enclosed in double quotes");
        return;
    case J_AFTER:
        json_fail(j, "Expecting ',' delimiter");
        return;
    default:
        json_fail(j, "Expecting value");
    }
}

/* ---- CSV: the states of CPython's Modules/_csv.c that the default dialect reaches. */

enum { C_START_RECORD, C_START_FIELD, C_IN_FIELD, C_IN_QUOTED, C_QUOTE_IN_QUOTED, C_EAT_CRNL, C_ERROR };
#define EOL (-2)

typedef struct {
    int state;
    int u8_need;
    unsigned char u8_lo, u8_hi;
    long long field_len, field_limit, fields, min_width, max_width, rows;
    long long line;
    int last_newline; /* the last byte fed was "\n" (or nothing was fed) */
    char problem[160];
} csv_t;

static void csv_fail(csv_t *c, const char *what)
{
    snprintf(c->problem, sizeof c->problem, "%s", what);
    c->state = C_ERROR;
}

static void csv_save_field(csv_t *c)
{
    c->fields++;
    c->field_len = 0;
}

/* `count` more characters on the current field, as csv.reader adds them. */
static void csv_grow(csv_t *c, long long count)
{
    if (c->field_len + count > c->field_limit) {
        snprintf(c->problem, sizeof c->problem, "field larger than field limit (%lld)", c->field_limit);
        c->state = C_ERROR;
        return;
    }
    c->field_len += count;
}

static void csv_add_char(csv_t *c) { csv_grow(c, 1); }

static void csv_not_utf8(csv_t *c)
{
    snprintf(c->problem, sizeof c->problem, "not UTF-8 (line %lld)", c->line);
    c->state = C_ERROR;
}

static void csv_row_done(csv_t *c)
{
    if (c->fields) {
        if (!c->rows || c->fields < c->min_width)
            c->min_width = c->fields;
        if (!c->rows || c->fields > c->max_width)
            c->max_width = c->fields;
        c->rows++;
    }
    c->fields = 0;
}

/* One character (any non-ASCII one is passed as 0x80: only its count matters) or EOL. */
static void csv_char(csv_t *c, int ch)
{
    int eol = ch == EOL, crnl = ch == '\n' || ch == '\r';
    switch (c->state) {
    case C_START_RECORD:
        if (eol)
            break;
        if (crnl) {
            c->state = C_EAT_CRNL;
            break;
        }
        c->state = C_START_FIELD;
        /* fall through */
    case C_START_FIELD:
        if (crnl || eol) {
            csv_save_field(c);
            c->state = eol ? C_START_RECORD : C_EAT_CRNL;
        } else if (ch == '"')
            c->state = C_IN_QUOTED;
        else if (ch == ',')
            csv_save_field(c);
        else {
            csv_add_char(c);
            if (c->state != C_ERROR)
                c->state = C_IN_FIELD;
        }
        break;
    case C_IN_FIELD:
        if (crnl || eol) {
            csv_save_field(c);
            c->state = eol ? C_START_RECORD : C_EAT_CRNL;
        } else if (ch == ',') {
            csv_save_field(c);
            c->state = C_START_FIELD;
        } else
            csv_add_char(c);
        break;
    case C_IN_QUOTED:
        if (eol)
            break;
        if (ch == '"')
            c->state = C_QUOTE_IN_QUOTED;
        else
            csv_add_char(c);
        break;
    case C_QUOTE_IN_QUOTED:
        if (ch == '"') {
            csv_add_char(c);
            if (c->state != C_ERROR)
                c->state = C_IN_QUOTED;
        } else if (ch == ',') {
            csv_save_field(c);
            c->state = C_START_FIELD;
        } else if (crnl || eol) {
            csv_save_field(c);
            c->state = eol ? C_START_RECORD : C_EAT_CRNL;
        } else {
            csv_add_char(c);
            if (c->state != C_ERROR)
                c->state = C_IN_FIELD;
        }
        break;
    case C_EAT_CRNL:
        if (eol)
            c->state = C_START_RECORD;
        else if (!crnl)
            csv_fail(c, "new-line character seen in unquoted field - do you need to open the file with newline=''?");
        break;
    }
    if (eol && c->state == C_START_RECORD)
        csv_row_done(c);
}

static void csv_feed(csv_t *c, bytes_t d, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n && c->state != C_ERROR; i++) {
        unsigned char b = d[i];
        if (c->u8_need) {
            if (b < c->u8_lo || b > c->u8_hi) {
                csv_not_utf8(c);
                break;
            }
            c->u8_lo = 0x80;
            c->u8_hi = 0xBF;
            c->u8_need--;
            continue;
        }
        if (b >= 0x80) {
            if (!utf8_lead(b, 0, &c->u8_need, &c->u8_lo, &c->u8_hi)) {
                csv_not_utf8(c);
                break;
            }
            csv_char(c, 0x80);
            continue;
        }
        if (c->state == C_IN_FIELD) { /* the common case: the rest of a plain field */
            Py_ssize_t k = i;
            while (k < n && csv_plain[d[k]])
                k++;
            if (k > i) {
                csv_grow(c, k - i);
                i = k - 1;
                continue;
            }
        }
        csv_char(c, b);
        if (b == '\n' && c->state != C_ERROR) {
            c->line++;
            csv_char(c, EOL);
        }
    }
    if (n)
        c->last_newline = d[n - 1] == '\n';
}

static void csv_end(csv_t *c)
{
    if (c->state == C_ERROR)
        return;
    if (c->u8_need) {
        csv_not_utf8(c);
        return;
    }
    if (!c->last_newline)
        csv_char(c, EOL); /* the last line, without its "\n" */
    if (c->state == C_IN_QUOTED) { /* a quote open at the end: the row is kept as it is */
        csv_save_field(c);
        csv_row_done(c);
    }
    if (c->rows && c->min_width != c->max_width) {
        snprintf(c->problem, sizeof c->problem, "rows have %lld to %lld columns", c->min_width, c->max_width);
        c->state = C_ERROR;
    }
}

/* ---- the Python interface */

typedef struct {
    char kind; /* 'j' or 'c' */
    union {
        json_t json;
        csv_t csv;
    } u;
} checker_t;

static const char CAPSULE[] = "seldonfs._structure.checker";

static void checker_free(PyObject *capsule)
{
    PyMem_Free(PyCapsule_GetPointer(capsule, CAPSULE));
}

static PyObject *new(PyObject *Py_UNUSED(self), PyObject *args)
{
    const char *kind;
    long long field_limit = 131072;
    if (!PyArg_ParseTuple(args, "s|L:new", &kind, &field_limit))
        return NULL;
    checker_t *k = PyMem_Calloc(1, sizeof *k);
    if (k == NULL)
        return PyErr_NoMemory();
    if (strcmp(kind, "json") == 0) {
        k->kind = 'j';
        k->u.json.state = J_VALUE;
        k->u.json.line = 1;
    } else if (strcmp(kind, "csv") == 0) {
        k->kind = 'c';
        k->u.csv.state = C_START_RECORD;
        k->u.csv.field_limit = field_limit;
        k->u.csv.line = 1;
        k->u.csv.last_newline = 1;
    } else {
        PyMem_Free(k);
        PyErr_Format(PyExc_ValueError, "no structure check for %s", kind);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(k, CAPSULE, checker_free);
    if (capsule == NULL)
        PyMem_Free(k);
    return capsule;
}

static PyObject *problem(checker_t *k)
{
    if (k->kind == 'j' ? k->u.json.state == J_ERROR : k->u.csv.state == C_ERROR)
        return PyUnicode_DecodeUTF8(k->kind == 'j' ? k->u.json.problem : k->u.csv.problem,
                                    (Py_ssize_t)strlen(k->kind == 'j' ? k->u.json.problem : k->u.csv.problem),
                                    "replace");
    Py_RETURN_NONE;
}

static PyObject *feed(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *capsule;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "Oy*:feed", &capsule, &buf))
        return NULL;
    checker_t *k = PyCapsule_GetPointer(capsule, CAPSULE);
    if (k == NULL) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (buf.len >= NOGIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        if (k->kind == 'j')
            json_feed(&k->u.json, buf.buf, buf.len);
        else
            csv_feed(&k->u.csv, buf.buf, buf.len);
        Py_END_ALLOW_THREADS
    } else if (k->kind == 'j')
        json_feed(&k->u.json, buf.buf, buf.len);
    else
        csv_feed(&k->u.csv, buf.buf, buf.len);
    PyBuffer_Release(&buf);
    return problem(k);
}

static PyObject *end(PyObject *Py_UNUSED(self), PyObject *capsule)
{
    checker_t *k = PyCapsule_GetPointer(capsule, CAPSULE);
    if (k == NULL)
        return NULL;
    if (k->kind == 'j')
        json_end(&k->u.json);
    else
        csv_end(&k->u.csv);
    return problem(k);
}

static PyMethodDef methods[] = {
    {"new", new, METH_VARARGS, "new(kind, field_limit=131072) -> a checker for kind \"json\" or \"csv\""},
    {"feed", feed, METH_VARARGS, "feed(checker, data) -> None, or the first problem found"},
    {"end", end, METH_O, "end(checker) -> None, or the problem the end of the file shows"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_structure", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__structure(void)
{
    tables();
    return PyModule_Create(&module);
}
