/* The sensitive-data scans of validation.py, in C.
 *
 * scan(data, kinds) -> the kinds (bits: 1 SSN, 2 card, 4 AWS key, 8 private
 * key) of `kinds` that `data` contains. Each test finds exactly what its
 * Python version in validation.py finds (tests/test_rules.py
 * compares the two on generated data); this one reads the bytes once per
 * kind at C speed, without the digit map, and without the GIL.
 *
 * Every index is checked against the buffer's length before it is read:
 * the data is whatever a user wrote.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum { SSN = 1, CARD = 2, AWS_KEY = 4, PRIVATE_KEY = 8 };

typedef const unsigned char *bytes_t;

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static inline int alnum(unsigned char c) { return is_digit(c) || upper(c) || (c >= 'a' && c <= 'z'); }
static inline int separator(unsigned char c) { return c == ' ' || c == '-'; }
static inline int in_run(unsigned char c) { return is_digit(c) || separator(c); }

static int all_digits(bytes_t d, Py_ssize_t at, Py_ssize_t count)
{
    for (Py_ssize_t i = at; i < at + count; i++)
        if (!is_digit(d[i]))
            return 0;
    return 1;
}

/* ---- SSN: DDD-DD-DDDD, not 000/666/9xx, 00 or 0000, not inside a longer
 * run of digits and dashes (validation._has_ssn). */

static int has_ssn(bytes_t d, Py_ssize_t n)
{
    /* every SSN has its first dash at i + 3: look only there */
    bytes_t at = d, end = d + n;
    while (at < end && (at = memchr(at, '-', (size_t)(end - at))) != NULL) {
        Py_ssize_t i = at - d - 3;
        at++;
        if (i < 0 || i + 11 > n)
            continue;
        if (d[i + 6] != '-' || !all_digits(d, i, 3) || !all_digits(d, i + 4, 2) || !all_digits(d, i + 7, 4))
            continue;
        if (i > 0 && (is_digit(d[i - 1]) || d[i - 1] == '-'))
            continue;
        if (i + 11 < n && (is_digit(d[i + 11]) || d[i + 11] == '-'))
            continue;
        if (memcmp(d + i, "000", 3) == 0 || memcmp(d + i, "666", 3) == 0 || d[i] == '9')
            continue;
        if (memcmp(d + i + 4, "00", 2) == 0 || memcmp(d + i + 7, "0000", 4) == 0)
            continue;
        return 1;
    }
    return 0;
}

/* ---- card numbers (validation._has_card) */

/* The issuer prefixes and lengths of validation._CARD_ISSUER. */
static int issuer(const char *s, Py_ssize_t len)
{
    if (s[0] == '4')
        return len == 13 || len == 16 || len == 19;
    if (s[0] == '5')
        return len == 16 && s[1] >= '1' && s[1] <= '5';
    if (s[0] == '2') {
        int p = (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
        return len == 16 && p >= 221 && p <= 720;
    }
    if (s[0] == '3') {
        if (len == 15 && (s[1] == '4' || s[1] == '7'))
            return 1;
        if (len == 14 && ((s[1] == '0' && s[2] >= '0' && s[2] <= '5') || s[1] == '6' || s[1] == '8' || s[1] == '9'))
            return 1;
        return len >= 16 && len <= 19 && s[1] == '5'
            && ((s[2] == '2' && (s[3] == '8' || s[3] == '9')) || (s[2] >= '3' && s[2] <= '8'));
    }
    if (s[0] == '6')
        return len >= 16 && len <= 19 && (memcmp(s + 1, "011", 3) == 0 || s[1] == '5');
    return 0;
}

static int luhn(const char *s, Py_ssize_t len)
{
    int total = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        int v = s[len - 1 - i] - '0';
        if (i % 2)
            v = v > 4 ? v * 2 - 9 : v * 2;
        total += v;
    }
    return total % 10 == 0;
}

/* A run holds a hint: 13 digits in a row, or 4 digits, a separator, 4 digits. */
static int hinted(bytes_t d, Py_ssize_t start, Py_ssize_t end)
{
    Py_ssize_t row = 0;
    for (Py_ssize_t i = start; i < end; i++) {
        row = is_digit(d[i]) ? row + 1 : 0;
        if (row >= 13)
            return 1;
        if (row >= 4 && i + 5 < end && separator(d[i + 1]) && all_digits(d, i + 2, 4))
            return 1;
    }
    return 0;
}

/* The matches of 0000(?:-?0){9,} in the run, left to right, each tested as
 * a written-alone number with an issuer's prefix and length and a Luhn sum. */
static int run_has_card(bytes_t d, Py_ssize_t n, Py_ssize_t start, Py_ssize_t end)
{
    char num[64];
    Py_ssize_t p = start;
    while (p + 13 <= end) {
        if (!all_digits(d, p, 4)) {
            p++;
            continue;
        }
        Py_ssize_t q = p + 4, more = 0;
        for (;;) {
            if (q < end && is_digit(d[q]))
                q += 1;
            else if (q + 1 < end && separator(d[q]) && is_digit(d[q + 1]))
                q += 2;
            else
                break;
            more++;
        }
        if (more < 9) {
            p++;
            continue;
        }
        if (d[p] >= '2' && d[p] <= '6' && !(p > 0 && alnum(d[p - 1])) && !(q < n && alnum(d[q]))) {
            Py_ssize_t len = 0;
            for (Py_ssize_t i = p; i < q && len < (Py_ssize_t)sizeof num; i++)
                if (is_digit(d[i]))
                    num[len++] = (char)d[i];
            if (len == 4 + more && issuer(num, len) && luhn(num, len))
                return 1;
        }
        p = q;
    }
    return 0;
}

static int has_card(bytes_t d, Py_ssize_t n)
{
    /* Every hint starts with four digits: skip to them (a byte that is no
     * digit rules out the groups that would hold it), then take the whole
     * run of digits and separators around them. */
    Py_ssize_t i = 0;
    while (i + 4 <= n) {
        if (!is_digit(d[i + 3])) {
            i += 4;
            continue;
        }
        Py_ssize_t k = i + 2;
        while (k >= i && is_digit(d[k]))
            k--;
        if (k >= i) {
            i = k + 1;
            continue;
        }
        Py_ssize_t start = i, end = i + 4;
        while (start > 0 && in_run(d[start - 1]))
            start--;
        while (end < n && in_run(d[end]))
            end++;
        if (end - start >= 9 && hinted(d, start, end) && run_has_card(d, n, start, end))
            return 1;
        i = end;
    }
    return 0;
}

/* ---- AWS access key ids: A[KS]IA and 16 of [A-Z0-9], standing alone. */

static int upper_or_digit(unsigned char c) { return upper(c) || is_digit(c); }

static int has_aws_key(bytes_t d, Py_ssize_t n)
{
    bytes_t at = d, end = d + n;
    while (end - at >= 20 && (at = memchr(at, 'A', (size_t)(end - at - 19))) != NULL) {
        Py_ssize_t i = at - d;
        at++;
        if ((d[i + 1] != 'K' && d[i + 1] != 'S') || d[i + 2] != 'I' || d[i + 3] != 'A')
            continue;
        if (i > 0 && upper_or_digit(d[i - 1]))
            continue;
        Py_ssize_t k = i + 4;
        while (k < i + 20 && upper_or_digit(d[k]))
            k++;
        if (k == i + 20 && !(k < n && upper_or_digit(d[k])))
            return 1;
    }
    return 0;
}

/* ---- private keys: -----BEGIN (WORD )?PRIVATE KEY----- */

static int has_private_key(bytes_t d, Py_ssize_t n)
{
    static const char tail[] = "PRIVATE KEY-----", head[] = "-----BEGIN ";
    const Py_ssize_t tl = sizeof tail - 1, hl = sizeof head - 1;
    bytes_t at = d, end = d + n;
    while (end - at >= tl && (at = memmem(at, (size_t)(end - at), tail, (size_t)tl)) != NULL) {
        Py_ssize_t j = at - d;
        at++;
        if (j >= hl && memcmp(d + j - hl, head, (size_t)hl) == 0)
            return 1;
        if (j < 2 || d[j - 1] != ' ')
            continue;
        Py_ssize_t m = j - 1;
        while (m > 0 && upper(d[m - 1]))
            m--;
        if (m < j - 1 && m >= hl && memcmp(d + m - hl, head, (size_t)hl) == 0)
            return 1;
    }
    return 0;
}

static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer buf;
    int kinds, found = 0;
    if (!PyArg_ParseTuple(args, "y*i:scan", &buf, &kinds))
        return NULL;
    bytes_t d = buf.buf;
    Py_ssize_t n = buf.len;
    Py_BEGIN_ALLOW_THREADS
    if (kinds & SSN && has_ssn(d, n))
        found |= SSN;
    if (kinds & CARD && has_card(d, n))
        found |= CARD;
    if (kinds & AWS_KEY && has_aws_key(d, n))
        found |= AWS_KEY;
    if (kinds & PRIVATE_KEY && has_private_key(d, n))
        found |= PRIVATE_KEY;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromLong(found);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(data, kinds) -> the kinds (1 SSN, 2 card, 4 AWS key, 8 private key) found"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_scan", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
