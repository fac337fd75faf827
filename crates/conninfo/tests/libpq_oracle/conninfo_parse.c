/*
 * Oracle for the conninfo parser tests: runs libpq's own PQconninfoParse() on each input.
 *
 * Input on stdin: connection strings separated by NUL bytes.
 * Output per input: "OK\n", then "keyword\thex(value)\n" for every option the string set, then "END\n";
 * or "ERR\t<message without trailing newline>\n".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>

static void print_hex(const char *s)
{
	for (; *s; s++)
		printf("%02x", (unsigned char) *s);
}

int main(void)
{
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	int c;

	if (!buf)
		return 1;
	for (;;)
	{
		c = getchar();
		if (len + 1 >= cap)
		{
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				return 1;
		}
		if (c == EOF && len == 0)
			break;
		if (c == EOF || c == 0)
		{
			char *err = NULL;
			PQconninfoOption *opts;

			buf[len] = '\0';
			opts = PQconninfoParse(buf, &err);
			if (opts == NULL)
			{
				size_t n = err ? strlen(err) : 0;

				while (n > 0 && err[n - 1] == '\n')
					n--;
				printf("ERR\t%.*s\n", (int) n, err ? err : "");
				PQfreemem(err);
			}
			else
			{
				printf("OK\n");
				for (PQconninfoOption *o = opts; o->keyword; o++)
				{
					if (o->val == NULL)
						continue;
					printf("%s\t", o->keyword);
					print_hex(o->val);
					printf("\n");
				}
				printf("END\n");
				PQconninfoFree(opts);
			}
			len = 0;
			if (c == EOF)
				break;
			continue;
		}
		buf[len++] = (char) c;
	}
	free(buf);
	return 0;
}
